import type { FastifyReply } from 'fastify'

/** Every error the proxy answers itself: status and code, declared once (DESIGN.md §5). */
export const PROXY_ERRORS = {
  bad_request: 400,
  forbidden: 403,
  not_found: 404,
  unknown_cluster: 404,
  method_not_allowed: 405,
  payload_too_large: 413,
  internal_error: 500,
  upstream_unreachable: 502,
  token_unavailable: 503,
  upstream_timeout: 504
} as const

export type ProxyErrorCode = keyof typeof PROXY_ERRORS

export class ProxyError extends Error {
  readonly code: ProxyErrorCode
  readonly status: number
  /** Seconds, sent as `Retry-After`. */
  readonly retryAfter: number | undefined

  constructor (code: ProxyErrorCode, message: string, retryAfter?: number) {
    super(message)
    this.name = 'ProxyError'
    this.code = code
    this.status = PROXY_ERRORS[code]
    this.retryAfter = retryAfter
  }
}

export function sendProxyError (reply: FastifyReply, error: ProxyError): FastifyReply {
  if (error.retryAfter !== undefined) reply.header('retry-after', String(error.retryAfter))
  return reply
    .code(error.status)
    .header('content-type', 'application/json; charset=utf-8')
    .header('cache-control', 'no-store')
    .send(JSON.stringify({ error: error.code, message: error.message, requestId: reply.request.id }))
}

/** A URL as it may appear in a message: no user info, query or fragment. */
export function displayUrl (url: URL): string {
  return url.origin + url.pathname
}
