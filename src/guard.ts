import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from './config.js'
import { ProxyError, sendProxyError } from './errors.js'
import { readSecret } from './secret.js'

/** Probes that orchestrators call without credentials. */
const OPEN_PATHS = new Set(['/-/healthy', '/-/ready'])

function digest (value: string): Buffer {
  return createHash('sha256').update(value).digest()
}

/**
 * The inbound checks, run before routing: origin-form targets only (never an open
 * proxy), and the inbound key when one is configured (read once at start-up).
 */
export function inboundGuard (config: Config): (request: FastifyRequest, reply: FastifyReply) => Promise<unknown> {
  const expected = config.inboundKey === undefined ? undefined : digest(`Bearer ${readSecret(config.inboundKey).reveal()}`)
  return async (request, reply) => {
    const url = request.raw.url ?? ''
    // `GET http://other/` (absolute form) or `*` would make this an open proxy.
    if (url[0] !== '/' || url[1] === '/') {
      return sendProxyError(reply, new ProxyError('bad_request', 'the request target must be a path starting with a single /'))
    }
    if (expected !== undefined) {
      const query = url.indexOf('?')
      const path = query === -1 ? url : url.slice(0, query)
      if (OPEN_PATHS.has(path)) return
      const sent = request.headers['proxy-authorization']
      // Compared as digests, in constant time whatever the length sent.
      if (typeof sent !== 'string' || !timingSafeEqual(digest(sent), expected)) {
        return sendProxyError(reply, new ProxyError('forbidden', 'this proxy needs Proxy-Authorization: Bearer <inbound key>'))
      }
    }
  }
}
