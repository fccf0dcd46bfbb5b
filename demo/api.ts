import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createLocalJWKSet, type JSONWebKeySet, type JWTPayload, jwtVerify } from 'jose'

export interface ApiOptions {
  readonly jwks: JSONWebKeySet
  readonly issuer: string
  readonly audience: string
  readonly port?: number
}

export interface Api {
  readonly url: string
  readonly server: Server
  /** Token ids (`jti`) refused with 401 although their signature is good: tokens revoked early. */
  readonly revoked: Set<string>
  readonly close: () => Promise<void>
}

export type Verify = (authorization: string | undefined) => Promise<JWTPayload | undefined>

/** Checks `Authorization: Bearer <jwt>`: signature against the JWKS, issuer, audience, expiry, revocation. */
export function bearerVerifier (options: ApiOptions, revoked: ReadonlySet<string>): Verify {
  const keys = createLocalJWKSet(options.jwks)
  return async (authorization) => {
    const match = /^Bearer (.+)$/.exec(authorization ?? '')
    if (match === null) return undefined
    try {
      const { payload } = await jwtVerify(match[1] as string, keys, { issuer: options.issuer, audience: options.audience })
      return payload.jti !== undefined && revoked.has(payload.jti) ? undefined : payload
    } catch {
      return undefined
    }
  }
}

/**
 * The demo's sample API: answers only requests whose bearer token the identity
 * provider signed. `GET /api/v1/clusters` lists clusters; anything else echoes
 * who called what.
 */
export async function startApi (options: ApiOptions): Promise<Api> {
  const revoked = new Set<string>()
  const verify = bearerVerifier(options, revoked)
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    verify(req.headers.authorization).then((claims) => {
      if (claims === undefined) {
        res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer error="invalid_token"' })
        res.end(JSON.stringify({ code: 401, message: 'a valid bearer token is required' }))
        return
      }
      const body = req.url?.startsWith('/api/v1/clusters') === true
        ? [{ name: 'gpu-a', status: 'Connected' }, { name: 'gpu-b', status: 'Connected' }]
        : { method: req.method, path: req.url, caller: claims.sub ?? claims.client_id, tokenExpires: new Date((claims.exp ?? 0) * 1000).toISOString() }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body) + '\n')
      req.resume()
    }, () => res.writeHead(500).end())
  })
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    revoked,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
