import { type Dispatcher, request } from 'undici'
import { TokenResponseError } from './dialect.js'

/** The most an identity provider's answer may hold: a discovery document or a token response is far smaller. */
export const MAX_ANSWER = 1024 * 1024

export interface OAuthCall {
  readonly method: 'GET' | 'POST'
  readonly headers: Record<string, string>
  readonly body?: string | undefined
  readonly dispatcher: Dispatcher
  /** Seconds for the whole answer, headers and body: a provider that trickles is cut off, not waited for. */
  readonly timeout: number
  /** An error answer may echo the request: it goes through this before anything reads it. */
  readonly scrub: (text: string) => string
}

/**
 * One request to an identity provider, for the proxy, `login` and `logout` alike:
 * never a redirect followed, the whole answer within `timeout`, at most 1 MiB of it
 * read, an error answer scrubbed of every secret before it is parsed. The body is
 * JSON when it parses, else undefined.
 */
export async function oauthRequest (url: URL, call: OAuthCall): Promise<{ status: number, body: unknown, nonce: string | undefined }> {
  const timeout = call.timeout * 1000
  const response = await request(url, {
    dispatcher: call.dispatcher,
    method: call.method,
    headers: call.headers,
    body: call.body,
    headersTimeout: timeout,
    bodyTimeout: timeout,
    signal: AbortSignal.timeout(timeout)
  })
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of response.body) {
    size += (chunk as Buffer).length
    if (size > MAX_ANSWER) {
      response.body.destroy()
      throw new TokenResponseError('with a body larger than 1 MiB', 'unreadable_body')
    }
    chunks.push(chunk as Buffer)
  }
  let text = Buffer.concat(chunks).toString('utf8')
  if (response.statusCode < 200 || response.statusCode > 299) text = call.scrub(text)
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {}
  const nonce = response.headers['dpop-nonce']
  return { status: response.statusCode, body: parsed, nonce: typeof nonce === 'string' ? nonce : undefined }
}

/** What OpenSSL says when an https:// URL reaches a server that speaks plain HTTP. */
const PLAIN_HTTP_ANSWER = /WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG|HTTP_REQUEST/
const PLAIN_HTTP_REASON = 'the server did not answer TLS; is the URL http://?'

export function answeredPlainHttp (code: string | undefined): boolean {
  return code !== undefined && PLAIN_HTTP_ANSWER.test(code)
}

/** `networkReason`'s words for a server that did not answer within the deadline. */
export const NO_ANSWER_IN_TIME = 'no answer in time'

export function networkReason (error: unknown): string {
  const seen = new Set<unknown>()
  let current: unknown = error
  while (current instanceof Error && !seen.has(current)) {
    seen.add(current)
    const code = (current as NodeJS.ErrnoException).code
    if (answeredPlainHttp(code)) return PLAIN_HTTP_REASON
    if (current.name === 'TimeoutError' || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return NO_ANSWER_IN_TIME
    if (code !== undefined && !code.startsWith('UND_ERR')) return code
    current = current.cause
  }
  return error instanceof Error ? error.name : 'unknown error'
}
