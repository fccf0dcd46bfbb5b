import { createHash } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { JSONWebKeySet } from 'jose'
import { bearerVerifier } from '../../demo/api.js'

export interface SeenRequest {
  readonly method: string
  readonly url: string
  readonly headers: IncomingHttpHeaders
  readonly bodyLength: number
  readonly bodySha256: string
  readonly body: string
  readonly sub: string | undefined
  readonly jti: string | undefined
  readonly authorized: boolean
}

export interface Upstream {
  readonly url: string
  readonly seen: SeenRequest[]
  /** Connections accepted so far. */
  connections: number
  /** Token ids refused although signed: revoked early. */
  readonly revoked: Set<string>
  /** Extra behaviour by path, tried before the echo. */
  readonly routes: Map<string, (req: IncomingMessage, res: ServerResponse, seen: SeenRequest) => void>
  readonly server: Server
  readonly close: () => Promise<void>
}

export interface UpstreamOptions {
  readonly jwks: JSONWebKeySet
  readonly issuer: string
  readonly audience: string
}

/**
 * An API on 127.0.0.1 that checks every bearer token's signature, issuer,
 * audience, expiry and revocation, records what reached it, and echoes it back.
 */
export async function startUpstream (options: UpstreamOptions): Promise<Upstream> {
  const revoked = new Set<string>()
  const verify = bearerVerifier(options, revoked)
  const routes = new Map<string, (req: IncomingMessage, res: ServerResponse, seen: SeenRequest) => void>()
  const seen: SeenRequest[] = []
  const server = createServer((req, res) => {
    const hash = createHash('sha256')
    const start: Buffer[] = []
    let length = 0
    req.on('data', (chunk: Buffer) => {
      hash.update(chunk)
      if (length < 65536) start.push(chunk)
      length += chunk.length
    })
    req.on('end', () => {
      verify(req.headers.authorization).then((claims) => {
        const record: SeenRequest = {
          method: req.method ?? '',
          url: req.url ?? '',
          headers: req.headers,
          bodyLength: length,
          bodySha256: hash.digest('hex'),
          body: Buffer.concat(start).toString('utf8'),
          sub: claims?.sub,
          jti: claims?.jti,
          authorized: claims !== undefined
        }
        seen.push(record)
        if (!record.authorized) {
          res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer error="invalid_token"' })
          res.end('{"code":401,"message":"invalid token"}')
          return
        }
        const path = (req.url ?? '').split('?')[0] as string
        const route = routes.get(path)
        if (route !== undefined) {
          route(req, res, record)
          return
        }
        res.writeHead(200, { 'content-type': 'application/json', 'x-upstream': 'yes' })
        res.end(JSON.stringify({ method: record.method, url: record.url, headers: record.headers, bodyLength: length, bodySha256: record.bodySha256, sub: record.sub }))
      }, () => res.writeHead(500).end())
    })
  })
  const upstream: Upstream = {
    url: '',
    seen,
    connections: 0,
    revoked,
    routes,
    server,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
  server.on('connection', () => { upstream.connections++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return Object.assign(upstream, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` })
}

export interface Echo {
  readonly url: string
  /** Requests received so far. */
  readonly requests: () => number
}

/** An upstream that trusts anything and answers with the `Authorization` it received, for tests of the token itself. */
export async function startEcho (t: { teardown: (fn: () => unknown) => void }): Promise<Echo> {
  let requests = 0
  const server = createServer((req, res) => {
    requests++
    req.resume()
    res.end(req.headers.authorization)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests: () => requests }
}
