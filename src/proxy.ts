import httpProxy from '@fastify/http-proxy'
import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import replyFrom, { type FastifyReplyFromHooks } from '@fastify/reply-from'
import { Dispatcher } from 'undici'
import { BearerDispatcher } from './bearer.js'
import { ProxyError, sendProxyError } from './errors.js'
import type { Admitted, InboundRequest } from './guard.js'
import { answeredPlainHttp, networkReason } from './oauth/http.js'
import type { TokenSource } from './token/access-token.js'
import { RouteRefusals } from './token/refusals.js'
import { basePath, locationRewriter, type Route, type RouteTable } from './routes.js'
import type { Tracing } from './tracing.js'

/** A route being served: its dispatcher adds the route's token, for HTTP and WebSocket alike. */
export interface ServedRoute extends Route {
  readonly dispatcher: Dispatcher
}

/** A route with its own credential: a dispatcher that adds its token, over the shared agent. */
export function serveRoute (route: Route, agent: Dispatcher, tokens: TokenSource, log: Logger, tracing: Tracing | undefined): ServedRoute {
  const credential = { route: route.name, tokens, refusals: new RouteRefusals(tokens), tracing }
  return { ...route, dispatcher: new BearerDispatcher(agent, credential, log) }
}

export interface ProxyOptions {
  readonly routes: readonly ServedRoute[]
  /** Seconds to wait for upstream response headers. */
  readonly timeout: number
  readonly log: Logger
}

/** Request headers never forwarded: the client's credentials and hop-by-hop headers (RFC 9110 §7.6.1). */
export const DROPPED_REQUEST_HEADERS = [
  'authorization', 'proxy-authorization', 'connection', 'keep-alive', 'proxy-connection',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect'
]
export const DROPPED_RESPONSE_HEADERS = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'trailer', 'te']
/** The dropped names without separators: a name that only differs from one of them by `_` and `-` is dropped too. */
const LOOK_ALIKES = new Set(DROPPED_REQUEST_HEADERS.map((name) => name.replace(/-/g, '')))

/**
 * Removes from request headers, in place, what the upstream must not see: the
 * client's credentials and hop-by-hop headers, the headers its `Connection` lists,
 * and names that differ from a dropped one only by `_` or `-` (`Proxy_Authorization`,
 * `Authorization_`), which CGI-style servers read as the real header, as nginx and
 * Envoy drop them.
 */
export function dropRequestHeaders (headers: Record<string, unknown>): void {
  const listed = headers.connection
  // Most clients send only `keep-alive` or `close`: nothing listed to remove, nothing to split.
  if (typeof listed === 'string' && listed !== 'keep-alive' && listed !== 'close') {
    for (const name of listed.split(',')) {
      const clean = name.trim().toLowerCase()
      if (clean !== '' && clean !== 'host') delete headers[clean]
    }
  }
  // Deleted, not set to undefined: undici's ProxyAgent refuses a request with a proxy-authorization key at all.
  for (const name of DROPPED_REQUEST_HEADERS) if (name in headers) delete headers[name]
  for (const name in headers) {
    if (name.includes('_') && LOOK_ALIKES.has(name.replace(/[-_]/g, ''))) delete headers[name]
  }
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The upstream a route forwards to, for logs and metrics. */
    upstream?: string
  }
  interface FastifyRequest {
    /** The discovered cluster a request went to (its Fastify route serves them all), for logs and metrics. */
    upstreamName: string | undefined
  }
}

/** Bodies are passed through as streams, whatever their type (never parsed, never capped). */
function passBodiesThrough (app: FastifyInstance): void {
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })
}

/** How reply-from forwards to one route: its header policy, `Location` rewriting and error answers. Made once per route. */
function replyOptionsFor (route: Route, options: Pick<ProxyOptions, 'timeout' | 'log'>): FastifyReplyFromHooks {
  const rewriteLocation = locationRewriter(route)
  return {
    retryDelay: () => null,
    queryString: rawQuery,
    rewriteRequestHeaders: (_request, headers) => {
      dropRequestHeaders(headers)
      return headers
    },
    rewriteHeaders: (headers) => {
      for (const name of DROPPED_RESPONSE_HEADERS) if (name in headers) delete headers[name]
      const { location, 'content-location': contentLocation } = headers
      if (typeof location === 'string') headers.location = rewriteLocation(location)
      if (typeof contentLocation === 'string') headers['content-location'] = rewriteLocation(contentLocation)
      return headers
    },
    onError: (reply, { error }) => {
      const failure = upstreamError(route, error, options.timeout)
      warnFailure(options.log, route, failure, reply.request.id)
      sendProxyError(reply, failure)
    }
  }
}

/**
 * The prefix alone (`/api`, `/api?q`) as the prefix with a slash: the upstream's base
 * path with a slash, as the route table resolves it for WebSocket upgrades and
 * discovered clusters. (http-proxy would send `/api?q` unchanged to an upstream at its root.)
 */
function bareToSlash (prefix: string): (url: string) => string {
  const query = `${prefix}?`
  return (url) => url === prefix || url.startsWith(query) ? `${prefix}/${url.slice(prefix.length)}` : url
}

/** Forwards `/…` and `/clusters/<name>/…` with the token added, through @fastify/http-proxy. */
export async function proxyRoutes (app: FastifyInstance, options: ProxyOptions): Promise<void> {
  passBodiesThrough(app)
  for (const route of options.routes) {
    await app.register(httpProxy, {
      upstream: route.upstream.href,
      prefix: route.prefix,
      // At `/`, http-proxy would join the upstream's base path and the target without a `/` (`/v2` + `things`).
      ...(route.prefix === '/' ? { rewritePrefix: `${basePath(route)}/` } : { preRewrite: bareToSlash(route.prefix) }),
      undici: route.dispatcher,
      proxyPayloads: false,
      internalRewriteLocationHeader: false,
      disableRequestLogging: true,
      // reply-from logs each failure at warn with its stack trace; the proxy's own warning says it in one line.
      logLevel: 'error',
      config: { upstream: route.name },
      replyOptions: replyOptionsFor(route, options)
    })
  }
}

export interface DiscoveredRoutesOptions {
  /** Where the clusters are served: `/clusters/`, or a route's `<prefix>/clusters/`. */
  readonly root: string
  readonly table: RouteTable<ServedRoute>
  /** Asked to read the list again when a request names an unknown cluster (at most every 30 s). */
  readonly refresh: () => Promise<void>
  /** The guard, for a request whose cluster became known only by a refresh. */
  readonly admit: (request: InboundRequest) => Admitted | ProxyError
  readonly timeout: number
  readonly log: Logger
}

/**
 * `<root><name or uuid>/…` for clusters found by discovery, which come and go
 * while Fastify's routes cannot: one route that resolves the cluster in the route
 * table at each request and forwards through reply-from, with the same policy as
 * configured routes, to a dispatcher that hands each request to its cluster's own
 * (the one that adds the token and follows that cluster's 401s).
 */
export async function discoveredRoutes (app: FastifyInstance, options: DiscoveredRoutesOptions): Promise<void> {
  const { table } = options
  passBodiesThrough(app)
  await app.register(replyFrom, { undici: new ClusterDispatcher(), disableRequestLogging: true, logLevel: 'error' })
  const replyOptions = new WeakMap<ServedRoute, FastifyReplyFromHooks>()
  app.all(`${options.root}*`, async (request, reply) => {
    const target = request.raw.url ?? ''
    let resolved = table.resolve(target)
    if (resolved instanceof ProxyError && resolved.code === 'unknown_cluster') {
      await options.refresh()
      resolved = table.resolve(target)
      // The guard judged a name it did not know yet: judged again, now that it names a cluster.
      const verdict = resolved instanceof ProxyError ? undefined : options.admit(request.raw)
      if (verdict instanceof ProxyError) return sendProxyError(reply, verdict)
    }
    if (resolved instanceof ProxyError) return sendProxyError(reply, resolved)
    const { route, path } = resolved
    request.upstreamName = route.name
    let hooks = replyOptions.get(route)
    if (hooks === undefined) {
      hooks = routedTo(route, replyOptionsFor(route, options))
      replyOptions.set(route, hooks)
    }
    const query = path.indexOf('?')
    return reply.from(route.upstream.origin + (query === -1 ? path : path.slice(0, query)), hooks)
  })
}

/**
 * The route a request to a discovered cluster was routed to, carried with the request
 * to the dispatcher: decided once, by the path the client sent, and never looked up
 * again from the upstream URL (two routes may reach one cluster with different tokens).
 * A symbol: no header a client sends can set it, and undici never sends it.
 */
const ROUTED = Symbol('routed')

function routedTo (route: ServedRoute, hooks: FastifyReplyFromHooks): FastifyReplyFromHooks {
  const rewrite = hooks.rewriteRequestHeaders as NonNullable<FastifyReplyFromHooks['rewriteRequestHeaders']>
  return { ...hooks, rewriteRequestHeaders: (request, headers) => Object.assign(rewrite(request, headers), { [ROUTED]: route }) }
}

/** Hands each request to the dispatcher of the route it was routed to (`ROUTED`), which adds that route's token. */
class ClusterDispatcher extends Dispatcher {
  override dispatch (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const headers = options.headers as Record<string | symbol, unknown>
    const route = headers[ROUTED] as ServedRoute | undefined
    // Thrown: undici's request() passes it to its caller, whose onError answers it, as for a refused dispatch.
    if (route === undefined) throw new ProxyError('unknown_cluster', 'the request reached the clusters\' dispatcher without its route')
    delete headers[ROUTED]
    return route.dispatcher.dispatch(options, handler)
  }

  override async close (): Promise<void> {}
  override async destroy (): Promise<void> {}
}

/** The query string exactly as the client sent it (http-proxy would parse and re-encode it). */
function rawQuery (_search: string | undefined, url: string): string {
  const at = url.indexOf('?')
  return at === -1 ? '' : url.slice(at + 1)
}

/** A 502, 503 or 504 the proxy answered: one warning line with the reason, no stack trace. */
export function warnFailure (log: Pick<Logger, 'warn'>, route: Route, failure: ProxyError, reqId?: string): void {
  log.warn({ reqId, event: failure.code, upstream: route.name, status: failure.status }, failure.message)
}

/** An upstream failure as the proxy's error: 504 when no headers came in time, else 502. */
export function upstreamError (route: Route, error: Error, timeout: number): ProxyError {
  const cause = (error as Error & { cause?: unknown }).cause ?? error
  if (cause instanceof ProxyError) return cause
  const [code, reason] = upstreamFailure(error, timeout)
  return new ProxyError(code, `upstream ${route.name} (${route.upstream.origin}) ${reason}`)
}

const NETWORK_REASONS: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'refused the connection',
  ECONNRESET: 'reset the connection',
  UND_ERR_SOCKET: 'closed the connection',
  ENOTFOUND: 'has a host name that does not resolve',
  UND_ERR_CONNECT_TIMEOUT: 'did not accept the connection in time'
}

/** Why an upstream could not be asked, in words that follow the upstream's name: 504 when no headers came in time, else 502. */
export function upstreamFailure (error: Error, timeout: number): ['upstream_timeout' | 'upstream_unreachable', string] {
  const cause = (error as Error & { cause?: unknown }).cause ?? error
  const code = (cause as NodeJS.ErrnoException).code ?? ''
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || (error as NodeJS.ErrnoException).code === 'FST_REPLY_FROM_GATEWAY_TIMEOUT') {
    return ['upstream_timeout', `sent no response headers within ${timeout} s`]
  }
  const reason = NETWORK_REASONS[code] ?? (answeredPlainHttp(code)
    ? 'did not answer TLS; is the URL http://?'
    : /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO/.test(code)
      ? `presented a TLS certificate that is not trusted (${code})`
      : `failed: ${networkReason(cause)}`)
  return ['upstream_unreachable', reason]
}
