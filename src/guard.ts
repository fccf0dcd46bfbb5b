import { createHash, timingSafeEqual } from 'node:crypto'
import type { onRequestHookHandler } from 'fastify'
import type { Config } from './config.js'
import { ProxyError, sendProxyError } from './errors.js'
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
 * The request path decoded once and checked: a path that could mean something else
 * to the upstream than to the proxy's router (backslashes, encoded `/`, `\` or `.`,
 * dot segments, double encoding, control characters, encoded route prefixes) is
 * refused. Returns the decoded path, or why it was refused.
 */
export function checkPath (raw: string): string | ProxyError {
  // Fast path: nothing encoded, no backslash, no dot segment.
  if (!raw.includes('%') && !raw.includes('\\') && !raw.includes('/.')) return raw
  const bad = (why: string): ProxyError => new ProxyError('bad_request', `the path ${why}`)
  if (raw.includes('\\')) return bad('contains a backslash')
  if (/%2f|%5c/i.test(raw)) return bad('contains an encoded / or \\')
  let decoded: string
  try {
    decoded = decodeURIComponent(raw)
  } catch {
    return bad('has malformed percent-encoding')
  }
  if (/%(2e|2f|5c|25)/i.test(decoded)) return bad('is encoded twice')
  if (/[\u0000-\u001f\u007f\\]/.test(decoded)) return bad('contains a control character')
  for (const segment of decoded.split('/')) {
    const bare = segment.split(';')[0]
    if (bare === '.' || bare === '..') return bad('contains a . or .. segment')
  }
  // The route prefix must be spelled literally, so that routing and prefix removal agree.
  const [, first = '', second = ''] = raw.split('/')
  const [, decodedFirst = ''] = decoded.split('/')
  if ((first.includes('%') && (decodedFirst === 'clusters' || decodedFirst === '-')) || (decodedFirst === 'clusters' && second.includes('%'))) {
    return bad('encodes its /clusters/<name> or /-/ prefix')
  }
  return decoded
}

/** Whole-segment prefix match: `/api/v1` matches `/api/v1` and `/api/v1/x`, not `/api/v10`. */
function prefixMatcher (prefixes: readonly string[]): ((path: string) => boolean) | undefined {
  if (prefixes.length === 0) return undefined
  const clean = prefixes.map((prefix) => `/${prefix.replace(/^\/+|\/+$/g, '')}`)
  return (path) => clean.some((prefix) => prefix === '/' || path === prefix || path.startsWith(`${prefix}/`))
}

export type Headers = Record<string, string | string[] | undefined>

/** What a request that passed the guard carries on: its decoded path, and the allowed browser origin, if any. */
export interface Admitted { readonly path: string, readonly origin: string | undefined }

export type Guard = (method: string, url: string, headers: Headers) => Admitted | ProxyError

/**
 * The inbound checks, for requests and WebSocket upgrades alike (DESIGN.md §2, §4):
 * origin-form targets only, paths decoded and checked once, the Host (DNS
 * rebinding) and Origin (cross-site requests) of browsers, the inbound key, then
 * method and path policy.
 */
export function createGuard (config: Config): Guard {
  const key = config.inboundKey === undefined ? undefined : digest(`Bearer ${readSecret(config.inboundKey).reveal()}`)
  const anyHost = config.allowedHosts.includes('*')
  const hosts = new Set([...LOOPBACK_HOSTS, ...config.allowedHosts.map(hostName)])
  const origins = new Set(config.allowedOrigins.map((origin) => origin.toLowerCase().replace(/\/+$/, '')))
  const allowed = prefixMatcher(config.allowPaths)
  const denied = prefixMatcher(config.denyPaths)
  const forbidden = (message: string): ProxyError => new ProxyError('forbidden', message)

  return (method, url, headers) => {
    // `GET http://other/` (absolute form) or `*` would make this an open proxy.
    if (url[0] !== '/' || url[1] === '/') return new ProxyError('bad_request', 'the request target must be a path starting with a single /')
    const query = url.indexOf('?')
    const path = checkPath(query === -1 ? url : url.slice(0, query))
    if (path instanceof ProxyError) return path
    if (PROBES.has(path)) return { path, origin: undefined }

    const host = headers.host
    if (!anyHost && typeof host === 'string' && !hosts.has(hostName(host))) {
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
    if (!path.startsWith('/-/')) {
      if (config.readOnly && !SAFE_METHODS.has(method)) return forbidden(`${method} is not forwarded: BEARER_PROXY_READ_ONLY is on`)
      if (denied?.(path) === true || (allowed !== undefined && !allowed(path))) {
        return forbidden('this path is not forwarded (BEARER_PROXY_ALLOW_PATHS / DENY_PATHS)')
      }
    }
    return { path, origin: typeof origin === 'string' ? origin : undefined }
  }
}

/**
 * The guard as Fastify's first hook; allowed browser origins get CORS, their preflights
 * answered here. Callback style: no promise per request.
 */
export function guardHook (guard: Guard, config: Config): onRequestHookHandler {
  const methods = config.readOnly ? 'GET, HEAD, OPTIONS' : 'GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE'
  return (request, reply, done) => {
    const verdict = guard(request.method, request.raw.url ?? '', request.headers)
    if (verdict instanceof ProxyError) {
      sendProxyError(reply, verdict)
      return
    }
    if (verdict.origin !== undefined) {
      reply.header('access-control-allow-origin', verdict.origin).header('vary', 'Origin')
      if (request.method === 'OPTIONS' && request.headers['access-control-request-method'] !== undefined) {
        reply.code(204)
          .header('access-control-allow-methods', methods)
          .header('access-control-allow-headers', request.headers['access-control-request-headers'] ?? '')
          .header('access-control-max-age', '600')
          .send()
        return
      }
    }
    done()
  }
}
