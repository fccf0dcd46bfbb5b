import { randomUUID } from 'node:crypto'
import { STATUS_CODES } from 'node:http'
import type { FastifyReply, RawServerBase, RouteGenericInterface } from 'fastify'

/** Every error the proxy answers itself: status and code, declared once. */
export const PROXY_ERRORS = {
  bad_request: 400,
  forbidden: 403,
  headers_too_large: 431,
  not_found: 404,
  unknown_cluster: 404,
  method_not_allowed: 405,
  request_timeout: 408,
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

const CONTENT_TYPE = 'application/json; charset=utf-8'

declare module 'fastify' {
  interface FastifyRequest {
    /** The code of the error the proxy answered this request with itself, for its trace span. */
    proxyError: ProxyErrorCode | undefined
  }
}

function errorBody (error: ProxyError, requestId: string): string {
  return JSON.stringify({ error: error.code, message: error.message, requestId })
}

/** The proxy's own answer through Fastify. */
export function sendProxyError (reply: FastifyReply<RouteGenericInterface, RawServerBase>, error: ProxyError): void {
  if (error.retryAfter !== undefined) reply.header('retry-after', String(error.retryAfter))
  reply.request.proxyError = error.code
  reply
    .code(error.status)
    .header('content-type', CONTENT_TYPE)
    .header('cache-control', 'no-store')
    .send(errorBody(error, String(reply.request.id)))
}

/**
 * The same answer as a whole HTTP/1.1 response, for sockets the proxy answers
 * without Fastify (parser refusals, CONNECT, WebSocket upgrades); the connection
 * is closed after it.
 */
export function rawErrorResponse (error: ProxyError, requestId: string = randomUUID()): string {
  const body = errorBody(error, requestId)
  const retry = error.retryAfter === undefined ? '' : `retry-after: ${error.retryAfter}\r\n`
  return `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? ''}\r\ncontent-type: ${CONTENT_TYPE}\r\ncache-control: no-store\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\n${retry}connection: close\r\n\r\n${body}`
}

/** A URL as it may appear in a message: no user info, query or fragment. */
export function displayUrl (url: URL): string {
  return url.origin + url.pathname
}
