import { readFileSync } from 'node:fs'
import { rootCertificates } from 'node:tls'
import type { Logger } from 'pino'
import { Agent, type Dispatcher, EnvHttpProxyAgent } from 'undici'
import type { ClientCertificate } from './keys.js'

export interface OutboundOptions {
  readonly caFile: string | undefined
  readonly insecureSkipVerify: boolean
  /** Seconds to wait for response headers. */
  readonly timeout: number
  readonly env?: NodeJS.ProcessEnv
}

/** What a dispatcher of a credential set with a client certificate adds: the certificate, presented in every TLS handshake. */
export interface ClientTls {
  readonly certificate: ClientCertificate
}

const PROXY_VARIABLES = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy']

/**
 * The dispatcher for outbound calls (token endpoint and upstreams), made once at
 * start-up: keep-alive pools per origin, the CA bundle, TLS verification, and
 * `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`. A credential set with a client certificate
 * (RFC 8705) has one of its own that presents it; the others share one.
 */
export function createDispatcher (options: OutboundOptions, log: Logger, client?: ClientTls): Dispatcher {
  // Said once, by the shared dispatcher.
  if (options.insecureSkipVerify && client === undefined) {
    log.warn({ event: 'tls_verification_disabled' },
      'BEARER_PROXY_INSECURE_SKIP_VERIFY=true: TLS certificates of the token endpoint and upstreams are NOT verified; anyone on the path can read your credentials')
  }
  const tls = {
    ...(options.caFile === undefined ? {} : { ca: [...rootCertificates, readFileSync(options.caFile, 'utf8')] }),
    rejectUnauthorized: !options.insecureSkipVerify,
    ...(client === undefined ? {} : { cert: client.certificate.cert, key: client.certificate.key })
  }
  const common = {
    headersTimeout: options.timeout * 1000,
    // Idle streams (watches, logs, server-sent events) are not cut.
    bodyTimeout: 0,
    keepAliveTimeout: 30_000,
    connect: tls
  }
  const env = options.env ?? process.env
  if (PROXY_VARIABLES.some((name) => (env[name] ?? '') !== '')) {
    return new EnvHttpProxyAgent({ ...common, requestTls: tls })
  }
  return new Agent(common)
}
