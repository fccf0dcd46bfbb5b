import { createServer, type IncomingHttpHeaders } from 'node:http'
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

export interface Scripted { status?: number, body: unknown, contentType?: string, delayMs?: number }

export interface TokenEndpoint {
  readonly url: string
  readonly calls: TokenCall[]
  /** Decides each answer; replace it between steps of a test. */
  answer: (call: TokenCall) => Scripted
}

const { privateKey } = await generateKeyPair('RS256')

/** A signed JWT with the given lifetime (seconds) and claims. */
export async function jwt (lifetime: number, claims: Record<string, unknown> = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000)
  return await new SignJWT({ ...claims }).setProtectedHeader({ alg: 'RS256' }).setIssuedAt(now).setExpirationTime(now + lifetime).setSubject(String(claims.sub ?? 'svc')).sign(privateKey)
}

/** A token endpoint on 127.0.0.1 whose answers a test scripts, recording every request it gets. */
export async function startTokenEndpoint (t: Teardown, answer: TokenEndpoint['answer']): Promise<TokenEndpoint> {
  const endpoint: TokenEndpoint = { url: '', calls: [], answer }
  const server = createServer((req, res) => {
    let raw = ''
    req.setEncoding('utf8')
    req.on('data', (chunk: string) => { raw += chunk })
    req.on('end', () => {
      const json = (req.headers['content-type'] ?? '').includes('json')
      const fields = json ? JSON.parse(raw || '{}') as Record<string, unknown> : Object.fromEntries(new URLSearchParams(raw))
      const call = { path: req.url ?? '', headers: req.headers, raw, fields }
      endpoint.calls.push(call)
      const scripted = endpoint.answer(call)
      const send = (): void => {
        if (res.destroyed) return
        res.writeHead(scripted.status ?? 200, { 'content-type': scripted.contentType ?? 'application/json' })
        res.end(typeof scripted.body === 'string' ? scripted.body : JSON.stringify(scripted.body))
      }
      if (scripted.delayMs === undefined) send()
      else setTimeout(send, scripted.delayMs)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  return Object.assign(endpoint, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` })
}
