import { randomUUID } from 'node:crypto'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyServerFactory } from 'fastify'
import type { Logger } from 'pino'
import { RequestLogger } from './log.js'
import { PROXY_ERRORS, ProxyError, type ProxyErrorCode, rawErrorResponse, sendProxyError } from './errors.js'
import { connectionRefused } from './guard.js'
import type { Metrics } from './metrics.js'
import type { ServedRoute } from './proxy.js'
import type { RouteTable } from './routes.js'
import type { TokenManager } from './token/manager.js'

/**
 * The Fastify app every listener and generation is made from (logging, error
 * bodies, CONNECT refused), and the proxy's own `/-/` endpoints.
 */

const CONNECT_REFUSED = new ProxyError('method_not_allowed', 'CONNECT is not supported: this is not a forward proxy')

/** What Node's HTTP parser refused, in the proxy's words; the connection is closed, its framing cannot be trusted. */
function clientError (error: NodeJS.ErrnoException & { reason?: unknown }): ProxyError {
  const code = error.code ?? ''
  if (code === 'HPE_HEADER_OVERFLOW') return new ProxyError('headers_too_large', 'the request headers are larger than this proxy accepts')
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return new ProxyError('request_timeout', 'the request was not received in time')
  // llhttp's own fixed wording ("Content-Length can't be present with Transfer-Encoding"), never the client's bytes.
  const reason = typeof error.reason === 'string' ? error.reason.replace(/[^\w '.,-]/g, '').slice(0, 100) : 'malformed request'
  return new ProxyError('bad_request', `the HTTP parser refused the request: ${reason}${code === '' ? '' : ` (${code})`}`)
}

const KNOWN_METHODS = new Set(['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS'])
/**
 * A Fastify instance with what every app shares: logging, error bodies, CONNECT
 * refused. `serverFactory` makes the server of the listener that hands each request
 * to the generation serving now.
 */
export function createApp (log: Logger, clusterHint: (target: string) => string | undefined = () => undefined, serverFactory?: FastifyServerFactory): FastifyInstance {
  const app = Fastify({
    ...(serverFactory === undefined ? {} : { serverFactory }),
    loggerInstance: log as FastifyBaseLogger,
    // One line per request, written in onResponse, instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => randomUUID(),
    childLoggerFactory: (logger, bindings, options) => new RequestLogger(logger as unknown as Logger, String(bindings.reqId), options.level) as unknown as FastifyBaseLogger,
    // Keep-alive sockets with no request in flight close at once on shutdown.
    forceCloseConnections: 'idle',
    return503OnClosing: true,
    // A missing Host is judged by the guard, so that its answer has the proxy's error shape.
    http: { requireHostHeader: false },
    clientErrorHandler: (error: NodeJS.ErrnoException, socket) => {
      if (error.code === 'ECONNRESET' || socket.destroyed) return
      // The bytes after a refused request (its body, read as framed wrongly): the refusal stays the one answer.
      if (connectionRefused(socket)) {
        socket.end()
        socket.once('finish', () => socket.destroy())
        return
      }
      if (socket.writable) socket.write(rawErrorResponse(clientError(error)))
      socket.destroy()
    },
    // Targets Fastify cannot parse get the same JSON errors as everything else.
    frameworkErrors: (error, _request, reply) => sendProxyError(reply, new ProxyError('bad_request', `the request target is malformed (${error.code})`))
  })
  app.decorateRequest('proxyError', undefined)
  app.server.on('connect', (_request, socket) => {
    socket.end(rawErrorResponse(CONNECT_REFUSED))
  })
  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error instanceof ProxyError) return sendProxyError(reply, error)
    const status = error.statusCode ?? 500
    if (status >= 500) {
      request.log.error({ err: error }, 'internal error')
      return sendProxyError(reply, new ProxyError('internal_error', 'internal error'))
    }
    // A 4xx Fastify raised keeps its meaning; one the table lacks is a bad request, never a 500.
    const code = (Object.keys(PROXY_ERRORS) as ProxyErrorCode[]).find((name) => PROXY_ERRORS[name] === status) ?? 'bad_request'
    return sendProxyError(reply, new ProxyError(code, error.message))
  })
  app.setNotFoundHandler((request, reply) => {
    if (!KNOWN_METHODS.has(request.method)) return sendProxyError(reply, new ProxyError('method_not_allowed', `${request.method} is not forwarded`))
    const hint = clusterHint(request.raw.url ?? '')
    sendProxyError(reply, new ProxyError('not_found', `nothing is served at this path${hint === undefined ? '' : `; did you mean ${hint}?`}`))
  })
  return app
}

/** What `/-/ready` and `/-/metrics` read: the credential sets, and the route table serving now. */
export interface View {
  readonly setTokens: ReadonlyMap<string, TokenManager>
  readonly metrics: Metrics
  readonly table: () => RouteTable<ServedRoute>
}

/** The proxy's own endpoints under `/-/`: never forwarded, never holding a token. */
export function ownEndpoints (app: FastifyInstance, { setTokens, metrics, table }: View): void {
  app.get('/-/healthy', async () => ({ healthy: true }))
  // Ready when every credential set holds a valid token; otherwise which do not, and why (never a token).
  app.get('/-/ready', async (_request, reply) => {
    // At most 100 routes named (a control plane may list thousands of clusters), and how many there are.
    const names = table().names()
    const routes = names.slice(0, 100)
    const more = names.length > routes.length ? { moreRoutes: names.length - routes.length } : {}
    const sets = [...setTokens].map(([name, tokens]) => ({ name, status: tokens.status(), reason: tokens.lastError() }))
    const waiting = sets.filter(({ status }) => !status.ready)
    if (waiting.length === 0) {
      const expiresAt = Math.min(...sets.map(({ status }) => status.expiresAt ?? 0))
      return { ready: true, tokenExpiresAt: new Date(expiresAt).toISOString(), routes, ...more }
    }
    const [first] = waiting
    return reply.code(503).send({
      ready: false,
      reason: first?.reason ?? 'the first token has not been obtained yet',
      ...(setTokens.size > 1 ? { credentials: waiting.map(({ name, reason }) => ({ name, reason: reason ?? 'the first token has not been obtained yet' })) } : {}),
      routes,
      ...more
    })
  })
  app.get('/-/metrics', async (_request, reply) => reply.type(metrics.registry.contentType).send(await metrics.scrape()))
  app.all('/-/*', async (_request, reply) => sendProxyError(reply, new ProxyError('not_found', 'the proxy has no such endpoint')))
}
