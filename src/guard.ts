import { createHash, timingSafeEqual } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import type { onRequestHookHandler } from 'fastify'
import type { Config } from './config.js'
import { ProxyError, sendProxyError } from './errors.js'
import { trimSlashes } from './url.js'
import { clusterRootsOf, CLUSTERS_PREFIX, OWN_PREFIX, ROUTE_SEGMENTS } from './routes.js'
import { readSecret } from './secret.js'

/** Probes that orchestrators call by pod address and without credentials. */
const PROBES = new Set(['/-/healthy', '/-/ready'])
const LOOPBACK_HOSTS = ['localhost', '127.0.0.1', '[::1]']
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS'])
const CROSS_SITE = new Set(['cross-site', 'same-site'])

function digest (value: string): Buffer {
  return createHash('sha256').update(value).digest()
}

/** `Host` without its port, lower case: `example.com`, `127.0.0.1`, `[::1]`. */
export function hostName (host: string): string {
  const lower = host.toLowerCase()
  if (lower.startsWith('[')) return lower.slice(0, lower.indexOf(']') + 1)
  const colon = lower.indexOf(':')
  return (colon === -1 ? lower : lower.slice(0, colon)).replace(/\.$/, '')
}

/**
 * The request path decoded once and checked. Whatever could make the upstream (or a
 * server behind it) read another path than the one judged here is refused, never
 * rewritten, so the path judged is exactly the path forwarded: backslashes, encoded
 * `/` or `\\`, dot segments, double encoding, control characters, encoded route
 * prefixes, empty segments (`//`, which nginx and Tomcat merge), path parameters
 * (`;`, which Tomcat, Jetty and Spring strip from a segment) and an encoded `#`, `?`
 * or `;` (which a server that decodes before it splits reads as a delimiter).
 * Returns the decoded path, or why it was refused.
 */
export function checkPath (raw: string, clusterRoots: readonly string[] = []): string | ProxyError {
  const bad = (why: string): ProxyError => new ProxyError('bad_request', `the path ${why}`)
  if (raw.includes('//')) return bad('has an empty segment (//)')
  if (raw.includes(';')) return bad('has a path parameter (;)')
  // Fast path: nothing encoded, no backslash, no dot segment.
  if (!raw.includes('%') && !raw.includes('\\') && !raw.includes('/.')) return raw
  if (raw.includes('\\')) return bad('contains a backslash')
  if (/%2f|%5c/i.test(raw)) return bad('contains an encoded / or \\')
  if (/%23|%3f|%3b/i.test(raw)) return bad('contains an encoded #, ? or ;')
  let decoded: string
  try {
    decoded = decodeURIComponent(raw)
  } catch {
    return bad('has malformed percent-encoding')
  }
  // Any escape left after one decoding: an upstream that decodes twice would read another path.
  if (/%[0-9a-f]{2}/i.test(decoded)) return bad('is encoded twice')
  if (/[\u0000-\u001f\u007f\\]/.test(decoded)) return bad('contains a control character')
  for (const segment of decoded.split('/')) {
    if (segment === '.' || segment === '..') return bad('contains a . or .. segment')
  }
  // The route prefix must be spelled literally, so that routing and prefix removal agree.
  const [, first = '', second = ''] = raw.split('/')
  const [, decodedFirst = ''] = decoded.split('/')
  if (ROUTE_SEGMENTS.has(decodedFirst) && (first.includes('%') || (decodedFirst !== '-' && second.includes('%')))) {
    return bad('encodes its /clusters/<name> or /-/ prefix')
  }
  // A route's own clusters, `<prefix>/clusters/<name>`, likewise.
  for (const root of clusterRoots) {
    if (decoded.startsWith(root) && (!raw.startsWith(root) || raw.slice(root.length).split('/', 1)[0]?.includes('%') === true)) {
      return bad(`encodes its ${root}<name> prefix`)
    }
  }
  return decoded
}

/** `host[:port]` as RFC 9110 allows it: a registered name, an IPv4 address or a bracketed IPv6 one. */
const HOST_VALUE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,=]+)(?::\d{0,5})?$/

/** The one `Host` of a request, or why it cannot be trusted (RFC 9112 §3.2): none on HTTP/1.1, two, or a malformed one. */
export function checkHost (request: InboundRequest): string | undefined | ProxyError {
  let host: string | undefined
  const raw = request.rawHeaders
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string
    if (name.length !== 4 || name.toLowerCase() !== 'host') continue
    if (host !== undefined) return new ProxyError('bad_request', 'the request has more than one Host header')
    host = raw[i + 1] as string
  }
  if (host === undefined) {
    return request.httpVersion === '1.0' ? undefined : new ProxyError('bad_request', 'the request has no Host header (HTTP/1.1 requires one)')
  }
  if (!HOST_VALUE.test(host)) return new ProxyError('bad_request', 'the request\'s Host header is not a valid host[:port]')
  return host
}

/** Headers by which a GET asks the upstream to act as another method (any mix of `-` and `_`, as CGI-style servers read them). */
const METHOD_OVERRIDES = new Set(['xhttpmethodoverride', 'xhttpmethod', 'xmethodoverride'])
const METHOD_PARAMETER = /(?:^|&)(?:_|%5f)method=/i

/** Whether a request asks to be treated as another method: an override header, or a `_method` query parameter. */
function overridesMethod (headers: Headers, query: string): boolean {
  for (const name in headers) {
    if (name.startsWith('x') && METHOD_OVERRIDES.has(name.replace(/[-_]/g, ''))) return true
  }
  return query !== '' && METHOD_PARAMETER.test(query)
}

/** Whole-segment prefix match: `/api/v1` matches `/api/v1` and `/api/v1/x`, not `/api/v10`. */
function prefixMatcher (prefixes: readonly string[]): ((path: string) => boolean) | undefined {
  if (prefixes.length === 0) return undefined
  // Case-insensitive: an upstream on a case-insensitive file system must not be reached by `/API/V1/ADMIN`.
  const clean = prefixes.map((prefix) => `/${prefix.replace(/^\/+|\/+$/g, '')}`.toLowerCase())
  return (path) => {
    const lower = path.toLowerCase()
    return clean.some((prefix) => prefix === '/' || lower === prefix || lower.startsWith(`${prefix}/`))
  }
}

export type Headers = Record<string, string | string[] | undefined>

/** What a request that passed the guard carries on: its decoded path, and the allowed browser origin, if any. */
export interface Admitted {
  readonly path: string
  readonly origin: string | undefined
  /** Only safe methods are forwarded there (`READ_ONLY`, or the route's own `readOnly`): what a CORS preflight announces. */
  readonly readOnly: boolean
}

/** What the guard reads of a request: Node's own message, for HTTP and WebSocket upgrades alike. */
export type InboundRequest = Pick<IncomingMessage, 'method' | 'url' | 'headers' | 'rawHeaders' | 'httpVersion'>

export type Guard = (request: InboundRequest) => Admitted | ProxyError

/**
 * The inbound checks, for requests and WebSocket upgrades alike:
 * origin-form targets only, paths decoded and checked once, the Host (DNS
 * rebinding) and Origin (cross-site requests) of browsers, the inbound key, then
 * method and path policy. Path rules judge the path with its cluster named as the
 * cluster is named (`canonical`), whichever name or spelling of it the client sent.
 */
export function createGuard (config: Config, canonical: (path: string) => string = (path) => path): Guard {
  const key = config.inboundKey === undefined ? undefined : digest(`Bearer ${readSecret(config.inboundKey).reveal()}`)
  const anyHost = config.allowedHosts.includes('*')
  const hosts = new Set([...LOOPBACK_HOSTS, ...config.allowedHosts.map(hostName)])
  const origins = new Set(config.allowedOrigins.map((origin) => trimSlashes(origin.toLowerCase())))
  const allowed = prefixMatcher(config.allowPaths)
  const denied = prefixMatcher(config.denyPaths)
  const forbidden = (message: string): ProxyError => new ProxyError('forbidden', message)
  // The top level's /clusters/ is checked by its first segment, as /-/ is.
  const clusterRoots = clusterRootsOf(config).filter((root) => root !== CLUSTERS_PREFIX)
  // The routes of a configuration file with a policy of their own, longest prefix first.
  const routes = config.prefixRoutes
    .filter((route) => route.readOnly || route.allowPaths.length > 0 || route.denyPaths.length > 0)
    .sort((a, b) => b.prefix.length - a.prefix.length)
    .map((route) => ({ route, allowed: prefixMatcher(route.allowPaths), denied: prefixMatcher(route.denyPaths) }))
  const rules = allowed !== undefined || denied !== undefined || routes.length > 0
  /** The policy of the route that serves `path`, with `path` as seen below its prefix. */
  const ownPolicy = (path: string): { policy: typeof routes[number], below: string } | undefined => {
    for (const policy of routes) {
      const { prefix } = policy.route
      if (prefix === '/') return { policy, below: path }
      if (path === prefix || path.startsWith(`${prefix}/`)) return { policy, below: path.slice(prefix.length) || '/' }
    }
    return undefined
  }

  return (request) => {
    const url = request.url ?? ''
    const method = request.method ?? 'GET'
    const headers = request.headers
    // `GET http://other/` (absolute form) or `*` would make this an open proxy.
    if (url[0] !== '/' || url[1] === '/') return new ProxyError('bad_request', 'the request target must be a path starting with a single /')
    // A fragment is never sent by a client; it would be judged here and dropped on the way.
    if (url.includes('#')) return new ProxyError('bad_request', 'the request target has a #fragment')
    const query = url.indexOf('?')
    const path = checkPath(query === -1 ? url : url.slice(0, query), clusterRoots)
    if (path instanceof ProxyError) return path
    const host = checkHost(request)
    if (host instanceof ProxyError) return host
    // Node decodes only `chunked`: any other coding would reach the upstream undeclared.
    const coding = headers['transfer-encoding']
    if (coding !== undefined && coding.trim().toLowerCase() !== 'chunked') {
      return new ProxyError('bad_request', 'the request has a Transfer-Encoding other than chunked')
    }
    if (PROBES.has(path)) return { path, origin: undefined, readOnly: true }

    if (!anyHost && host !== undefined && !hosts.has(hostName(host))) {
      return forbidden('this Host is not accepted (add it to BEARER_PROXY_ALLOWED_HOSTS)')
    }
    const origin = headers.origin
    if (typeof origin === 'string') {
      if (!origins.has(origin.toLowerCase())) return forbidden('requests from this browser origin are not accepted (BEARER_PROXY_ALLOWED_ORIGINS)')
    } else if (CROSS_SITE.has(String(headers['sec-fetch-site']))) {
      return forbidden('cross-site browser requests are not accepted')
    }
    if (key !== undefined) {
      const sent = headers['proxy-authorization']
      // Compared as digests, in constant time whatever the length sent.
      if (typeof sent !== 'string' || !timingSafeEqual(digest(sent), key)) {
        return forbidden('this proxy needs Proxy-Authorization: Bearer <inbound key>')
      }
    }
    // Only with rules to judge by: the plain case costs nothing.
    const judged = rules ? canonical(path) : path
    const own = routes.length === 0 || path.startsWith(OWN_PREFIX) ? undefined : ownPolicy(judged)
    const readOnly = config.readOnly || own?.policy.route.readOnly === true
    if (!path.startsWith(OWN_PREFIX)) {
      if (readOnly) {
        const why = config.readOnly ? 'BEARER_PROXY_READ_ONLY is on' : `route ${own?.policy.route.name ?? ''} is readOnly`
        if (!SAFE_METHODS.has(method)) return forbidden(`${method} is not forwarded: ${why}`)
        if (overridesMethod(headers, query === -1 ? '' : url.slice(query + 1))) {
          return forbidden(`a method override (X-HTTP-Method-Override, _method…) is not forwarded: ${why}`)
        }
        // A tunnel carries writes as well as reads (exec, attach).
        if (headers.upgrade !== undefined) return forbidden(`WebSocket upgrades are not forwarded: ${why}`)
      }
      if (denied?.(judged) === true || (allowed !== undefined && !allowed(judged))) {
        return forbidden('this path is not forwarded (BEARER_PROXY_ALLOW_PATHS / DENY_PATHS)')
      }
      if (own !== undefined && (own.policy.denied?.(own.below) === true || (own.policy.allowed !== undefined && !own.policy.allowed(own.below)))) {
        return forbidden(`this path is not forwarded (route ${own.policy.route.name}'s allowPaths / denyPaths)`)
      }
    }
    return { path, origin: typeof origin === 'string' ? origin : undefined, readOnly }
  }
}

/**
 * Connections whose last answer is a refusal (400): whatever else their client sent
 * (a pipelined request, the body of a request framed wrongly, an upgrade) is
 * parsed by Node but never answered, forwarded or tunnelled; the connection
 * closes once the refusal is written.
 */
const refused = new WeakSet<object>()

export function refuseConnection (socket: object): void {
  refused.add(socket)
}

/** Whether a refusal was the last answer of this connection. */
export function connectionRefused (socket: object): boolean {
  return refused.has(socket)
}

/**
 * The guard as Fastify's first hook; allowed browser origins get CORS, their preflights
 * answered here. Callback style: no promise per request.
 */
export function guardHook (guard: Guard): onRequestHookHandler {
  return (request, reply, done) => {
    const verdict = guard(request.raw)
    if (verdict instanceof ProxyError) {
      // A malformed request may be framed wrongly too: its answer is the connection's last.
      if (verdict.status === 400) {
        refuseConnection(request.raw.socket)
        reply.header('connection', 'close')
      }
      sendProxyError(reply, verdict)
      return
    }
    if (verdict.origin !== undefined) {
      reply.header('access-control-allow-origin', verdict.origin).header('vary', 'Origin')
      if (request.method === 'OPTIONS' && request.headers['access-control-request-method'] !== undefined) {
        reply.code(204)
          .header('access-control-allow-methods', verdict.readOnly ? 'GET, HEAD, OPTIONS' : 'GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE')
          .header('access-control-allow-headers', request.headers['access-control-request-headers'] ?? '')
          .header('access-control-max-age', '600')
          .send()
        return
      }
    }
    done()
  }
}
