import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createTlsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { generateKeyPair, SignJWT } from 'jose'
import type { Teardown } from './stack.js'

export interface TokenCall {
  readonly path: string
  readonly headers: IncomingHttpHeaders
  readonly raw: string
  /** The body as form fields or JSON, whichever it was. */
  readonly fields: Record<string, unknown>
}

export interface Scripted {
  status?: number
  body: unknown
  contentType?: string
  headers?: Record<string, string>
  delayMs?: number
  /** `trickle`: the headers, then a byte every 100 ms until the client goes; `huge`: 100 MB of body, as fast as the client reads. */
  stream?: 'trickle' | 'huge'
}

export interface TokenEndpoint {
  readonly url: string
  readonly calls: TokenCall[]
  /** Decides each answer; replace it between steps of a test. */
  answer: (call: TokenCall) => Scripted | Promise<Scripted>
}

const { privateKey } = await generateKeyPair('RS256')

/** A signed JWT with the given lifetime (seconds) and claims. */
export async function jwt (lifetime: number, claims: Record<string, unknown> = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000)
  return await new SignJWT({ ...claims }).setProtectedHeader({ alg: 'RS256' }).setIssuedAt(now).setExpirationTime(now + lifetime).setSubject(String(claims.sub ?? 'svc')).sign(privateKey)
}

/** A token endpoint on 127.0.0.1 whose answers a test scripts, recording every request it gets; over TLS with `tls`. */
export async function startTokenEndpoint (t: Teardown, answer: TokenEndpoint['answer'], tls?: { key: string, cert: string }): Promise<TokenEndpoint> {
  const endpoint: TokenEndpoint = { url: '', calls: [], answer }
  const timers = new Set<NodeJS.Timeout>()
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    let raw = ''
    req.setEncoding('utf8')
    req.on('data', (chunk: string) => { raw += chunk })
    req.on('end', () => {
      const json = (req.headers['content-type'] ?? '').includes('json')
      const fields = json ? JSON.parse(raw || '{}') as Record<string, unknown> : Object.fromEntries(new URLSearchParams(raw))
      const call = { path: req.url ?? '', headers: req.headers, raw, fields }
      endpoint.calls.push(call)
      void Promise.resolve(endpoint.answer(call)).then((scripted) => { answerWith(scripted) })
      const answerWith = (scripted: Scripted): void => {
      const send = (): void => {
        if (res.destroyed) return
        res.writeHead(scripted.status ?? 200, { 'content-type': scripted.contentType ?? 'application/json', ...scripted.headers })
        if (scripted.stream === 'trickle') {
          const timer = setInterval(() => { if (res.destroyed) clearInterval(timer); else res.write(' ') }, 100)
          timers.add(timer)
          res.once('close', () => { clearInterval(timer); timers.delete(timer) })
          return
        }
        if (scripted.stream === 'huge') {
          const chunk = Buffer.alloc(64 * 1024, 0x20)
          let left = 1600
          const more = (): void => {
            while (left > 0 && !res.destroyed) {
              left--
              if (!res.write(chunk)) return void res.once('drain', more)
            }
            if (!res.destroyed) res.end()
          }
          more()
          return
        }
        res.end(typeof scripted.body === 'string' ? scripted.body : JSON.stringify(scripted.body))
      }
      if (scripted.delayMs === undefined) send()
      else setTimeout(send, scripted.delayMs)
      }
    })
  }
  const server = tls === undefined ? createServer(handle) : createTlsServer(tls, handle)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const timer of timers) clearInterval(timer)
    server.closeAllConnections()
    server.close()
  })
  return Object.assign(endpoint, { url: `${tls === undefined ? 'http' : 'https'}://127.0.0.1:${(server.address() as AddressInfo).port}` })
}
