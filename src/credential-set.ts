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
import { TokenManager } from './token/manager.js'

/** What every credential set of a process shares: the log, the shared dispatcher and how dispatchers are made, the managers' timings. */
export interface SetContext {
  readonly log: Logger
  readonly dispatcher: Dispatcher
  readonly outbound: OutboundOptions
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

  constructor (name: string, settings: TokenSettings, context: SetContext, outbound: Outbound = outboundOf(settings, context)) {
    this.name = name
    this.#settings = settings
    this.#outbound = outbound
    this.#fingerprint = fingerprintOf(settings)
    this.#log = context.log
    this.tokens = new TokenManager(new TokenClient(settings, outbound.tokens, context.log, dpopKeyOf(settings)), {
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
    this.tokens.reconfigure(new TokenClient(settings, outbound.tokens, this.#log, dpopKeyOf(settings)), settings.refreshSkew)
    if (previous !== outbound.own) void previous?.close()
  }

  /** No more tokens; its own dispatcher closed once requests on their way finish. */
  async close (): Promise<void> {
    this.tokens.close()
    await this.#outbound.own?.close()
  }
}
