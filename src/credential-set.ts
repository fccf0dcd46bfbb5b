import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import { readClientCertificate } from './keys.js'
import { DPoPKey } from './oauth/dpop.js'
import { TokenClient } from './oauth/token-client.js'
import { filesOf, secretsOf, type TokenSettings } from './oauth/settings.js'
import { createDispatcher, type OutboundOptions } from './outbound.js'
import { digestOf } from './secret.js'
import type { Clock } from './token/clock.js'
import { type Granted, TokenManager, type TokenRequester } from './token/manager.js'
import type { Tracing } from './tracing.js'

/** What every credential set of a process shares: the log, the shared dispatcher and how dispatchers are made, the managers' timings. */
export interface SetContext {
  readonly log: Logger
  readonly dispatcher: Dispatcher
  readonly outbound: OutboundOptions
  /** Traces, when on: a span per token request. */
  readonly tracing?: Tracing | undefined
  /** The token managers' clock: a test's, to move their time on. */
  readonly clock?: Clock | undefined
  /** Token back-off and renewal point, for tests that cannot wait a second. */
  readonly backoffMs?: number | undefined
  readonly renewAt?: number | undefined
}

/**
 * Where a credential set's calls go out: the shared dispatcher, or, with a client
 * certificate (RFC 8705), one of its own that presents it to the token endpoint,
 * and to the set's upstreams too with `UPSTREAM_CLIENT_CERT`.
 */
export interface Outbound {
  readonly tokens: Dispatcher
  readonly upstreams: Dispatcher
  /** The set's own dispatcher, closed when the set changes or goes. */
  readonly own: Dispatcher | undefined
}

/** How a set with `settings` goes out: its certificate and key read now (a reload reads them again when they change). */
export function outboundOf (settings: TokenSettings, context: SetContext): Outbound {
  if (settings.clientCert === undefined) return { tokens: context.dispatcher, upstreams: context.dispatcher, own: undefined }
  const own = createDispatcher(context.outbound, context.log, { certificate: readClientCertificate(settings.clientCert.cert, settings.clientCert.key) })
  return { tokens: own, upstreams: settings.upstreamClientCert ? own : context.dispatcher, own }
}

/**
 * What identifies a credential set's settings, secrets included (their values and
 * the contents of their files, hashed): a reload replaces the sets whose print changed.
 */
export function fingerprintOf (settings: TokenSettings): string {
  const hash = createHash('sha256').update(JSON.stringify(settings))
  for (const source of secretsOf(settings.credentials)) hash.update('\0').update(digestOf(source))
  // A rotated key or certificate changes the set as a rotated secret does.
  for (const file of filesOf(settings, 'keys')) {
    try {
      hash.update('\0').update(readFileSync(file))
    } catch (error) {
      hash.update(`\0unreadable ${(error as NodeJS.ErrnoException).code ?? ''}`)
    }
  }
  return hash.digest('hex')
}

/** The set's DPoP key (RFC 9449): its `DPOP_KEY_FILE`, else one made now and kept in memory; none when `DPOP` is off. */
function dpopKeyOf (settings: TokenSettings): DPoPKey | undefined {
  if (settings.dpop === 'off') return undefined
  return settings.dpopKeyFile === undefined ? DPoPKey.generate() : DPoPKey.read(settings.dpopKeyFile)
}

/** Token requests as `requester` makes them, each a span of `tracing`'s: the set, the grant and endpoint, and the outcome. */
function traced (requester: TokenRequester, tracing: Tracing, set: string, settings: TokenSettings): TokenRequester {
  return {
    request: async (now, parent) => await tracing.operation('token request', parent, {
      'bearer_proxy.credential_set': set,
      'bearer_proxy.token.grant': settings.credentials.grant,
      'bearer_proxy.token.endpoint': requester.where(),
      'bearer_proxy.token.waited': parent !== undefined
    }, async () => await requester.request(now, parent), {
      succeeded: (granted: Granted) => ({
        'bearer_proxy.token.grant_used': granted.grant,
        'bearer_proxy.token.lifetime_s': Math.round(granted.lifetimeMs / 1000),
        'bearer_proxy.token.dpop': granted.dpop !== undefined
      }),
      failed: (error) => ({ message: requester.explain(error), type: failureType(error) })
    }),
    explain: (error) => requester.explain(error),
    where: () => requester.where()
  }
}

/** A failed token request's kind: the endpoint's status, the network's code, or the error's name. */
function failureType (error: unknown): string {
  const { status, code, name } = error as { status?: unknown, code?: unknown, name?: unknown }
  if (typeof status === 'number') return String(status)
  return typeof code === 'string' ? code : typeof name === 'string' ? name : 'Error'
}

/**
 * One credential set, as `serve`, `check`, `token` and `clusters` use it: its
 * settings, its token manager (and the OAuth client it asks), the dispatchers its
 * calls go out by, and the print a reload compares. Its manager is started by the
 * caller, once the proxy can be reached.
 */
export class CredentialSet {
  readonly name: string
  readonly tokens: TokenManager
  #settings: TokenSettings
  #outbound: Outbound
  #fingerprint: string
  readonly #log: Logger
  readonly #tracing: Tracing | undefined

  constructor (name: string, settings: TokenSettings, context: SetContext, outbound: Outbound = outboundOf(settings, context)) {
    this.name = name
    this.#settings = settings
    this.#outbound = outbound
    this.#fingerprint = fingerprintOf(settings)
    this.#log = context.log
    this.#tracing = context.tracing
    this.tokens = new TokenManager(this.#requester(settings, outbound), {
      log: context.log, skew: settings.refreshSkew, clock: context.clock, backoffMs: context.backoffMs, renewAt: context.renewAt
    })
  }

  get settings (): TokenSettings { return this.#settings }
  /** Where the set's upstream requests go out. */
  get upstreams (): Dispatcher { return this.#outbound.upstreams }
  get fingerprint (): string { return this.#fingerprint }

  /** Whether `settings`, with its secrets and files as they are now, differ from the set's. */
  changedBy (settings: TokenSettings): boolean {
    return fingerprintOf(settings) !== this.#fingerprint
  }

  /**
   * New settings (a reload), going out by `outbound` (made by `outboundOf` before the
   * new routes were built): the token is renewed under them at once, and the set's
   * old dispatcher closed once its requests finish.
   */
  reconfigure (settings: TokenSettings, outbound: Outbound): void {
    const previous = this.#outbound.own
    this.#settings = settings
    this.#outbound = outbound
    this.#fingerprint = fingerprintOf(settings)
    this.tokens.reconfigure(this.#requester(settings, outbound), settings.refreshSkew)
    if (previous !== outbound.own) void previous?.close()
  }

  /** How the set's tokens are asked for under `settings`: its OAuth client, traced when traces are on. */
  #requester (settings: TokenSettings, outbound: Outbound): TokenRequester {
    const client = new TokenClient(settings, outbound.tokens, this.#log, dpopKeyOf(settings))
    return this.#tracing === undefined ? client : traced(client, this.#tracing, this.name, settings)
  }

  /** No more tokens; its own dispatcher closed once requests on their way finish. */
  async close (): Promise<void> {
    this.tokens.close()
    await this.#outbound.own?.close()
  }
}
