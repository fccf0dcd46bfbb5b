import { createHash, randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import { calculateJwkThumbprint, createLocalJWKSet, EmbeddedJWK, type JSONWebKeySet, jwtVerify } from 'jose'
import { WebSocketServer } from 'ws'
import type { Teardown } from './stack.js'

export interface DPoPUpstream {
  readonly url: string
  /** Every proof that reached it, accepted or not, as a copy from its log would hold them. */
  readonly proofs: string[]
  /** The subjects of the requests it accepted. */
  readonly accepted: string[]
  /** Why it refused what it refused (`invalid_dpop_proof: …`, `use_dpop_nonce`). */
  readonly refused: string[]
  /** Demand its own nonce (RFC 9449 §9), changing it after `rotateAfter` accepted requests. */
  requireNonce: boolean
  /** Access tokens (by `jti`) refused although signed: revoked early. */
  readonly revoked: Set<string>
  /** The `jti` of each access token it accepted, in order. */
  readonly tokens: string[]
}

/**
 * A resource server as RFC 9449 §7 has it check a DPoP-bound token: the token's
 * signature, issuer and audience; exactly one proof, signed by the key its header
 * names, whose thumbprint is the token's `cnf.jkt`; `htm` and `htu` this request's;
 * `ath` the token's hash; `iat` within a minute; a `jti` never seen before; its own
 * nonce when it asks for one. Over HTTP and WebSocket upgrades alike.
 */
export async function startDPoPUpstream (t: Teardown, idp: { jwks: JSONWebKeySet, issuer: string }, audience: string, rotateAfter = 3): Promise<DPoPUpstream> {
  const keys = createLocalJWKSet(idp.jwks)
  const seenJti = new Set<string>()
  let nonce = randomBytes(16).toString('base64url')
  let sinceRotation = 0
  const upstream: DPoPUpstream = { url: '', proofs: [], accepted: [], refused: [], requireNonce: false, revoked: new Set(), tokens: [] }

  const check = async (req: IncomingMessage): Promise<{ status: 200, sub: string, jti: string } | { status: 401, error: string, description: string }> => {
    const authorization = req.headers.authorization ?? ''
    const proofs = req.headersDistinct.dpop ?? []
    for (const proof of proofs) upstream.proofs.push(proof)
    if (!authorization.startsWith('DPoP ')) return { status: 401, error: 'invalid_token', description: 'not a DPoP token' }
    if (proofs.length !== 1) return { status: 401, error: 'invalid_dpop_proof', description: 'exactly one DPoP proof' }
    const token = authorization.slice(5)
    const proof = proofs[0] as string
    try {
      const { payload: claims } = await jwtVerify(token, keys, { issuer: idp.issuer, audience })
      if (upstream.revoked.has(String(claims.jti))) return { status: 401, error: 'invalid_token', description: 'revoked' }
      const { payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: ['ES256', 'RS256', 'PS256', 'EdDSA'] })
      const jkt = (claims.cnf as { jkt?: string } | undefined)?.jkt
      if (jkt === undefined || jkt !== await calculateJwkThumbprint(protectedHeader.jwk as Parameters<typeof calculateJwkThumbprint>[0])) throw new Error('the proof\'s key is not the token\'s')
      const htu = `http://${req.headers.host ?? ''}${(req.url ?? '').split('?')[0] as string}`
      if (payload.htm !== req.method) throw new Error('htm')
      if (payload.htu !== htu) throw new Error(`htu ${String(payload.htu)} is not ${htu}`)
      if (payload.ath !== createHash('sha256').update(token).digest('base64url')) throw new Error('ath')
      if (typeof payload.iat !== 'number' || Math.abs(payload.iat - Date.now() / 1000) > 60) throw new Error('iat')
      if (typeof payload.jti !== 'string' || seenJti.has(payload.jti)) throw new Error('a proof seen before (replay)')
      if (upstream.requireNonce && payload.nonce !== nonce) return { status: 401, error: 'use_dpop_nonce', description: 'the resource server\'s nonce' }
      seenJti.add(payload.jti)
      if (upstream.requireNonce && ++sinceRotation >= rotateAfter) {
        nonce = randomBytes(16).toString('base64url')
        sinceRotation = 0
      }
      return { status: 200, sub: String(claims.sub), jti: String(claims.jti) }
    } catch (error) {
      return { status: 401, error: 'invalid_dpop_proof', description: (error as Error).message }
    }
  }
  const challenge = (error: string, description: string): Record<string, string> => ({
    'www-authenticate': `DPoP error="${error}", error_description="${description.replace(/"/g, '\'')}", algs="ES256 RS256 PS256 EdDSA"`,
    ...(upstream.requireNonce ? { 'dpop-nonce': nonce } : {})
  })

  const websockets = new WebSocketServer({ noServer: true })
  const server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      void check(req).then((verdict) => {
        if (verdict.status === 401) {
          upstream.refused.push(`${verdict.error}: ${verdict.description}`)
          res.writeHead(401, challenge(verdict.error, verdict.description)).end()
          return
        }
        upstream.accepted.push(verdict.sub)
        upstream.tokens.push(verdict.jti)
        res.writeHead(200, { 'content-type': 'application/json', ...(upstream.requireNonce ? { 'dpop-nonce': nonce } : {}) }).end(JSON.stringify({ sub: verdict.sub }))
      })
    })
  })
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    void check(req).then((verdict) => {
      if (verdict.status === 401) {
        upstream.refused.push(`${verdict.error}: ${verdict.description}`)
        socket.end(`HTTP/1.1 401 Unauthorized\r\n${Object.entries(challenge(verdict.error, verdict.description)).map(([name, value]) => `${name}: ${value}\r\n`).join('')}content-length: 0\r\nconnection: close\r\n\r\n`)
        return
      }
      upstream.accepted.push(verdict.sub)
      websockets.handleUpgrade(req, socket, head, (ws) => { ws.send(`hello ${verdict.sub}`) })
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const client of websockets.clients) client.terminate()
    websockets.close()
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => { resolve() }))
  })
  return Object.assign(upstream, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` })
}
