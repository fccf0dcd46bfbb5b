import { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import { ProxyError } from '../errors.js'
import type { Secret } from '../secret.js'
import { AccessToken, type DPoPBinding, type TokenSource } from './access-token.js'
import { type Clock, REAL_CLOCK } from './clock.js'

const RENEW_AT = 0.8
/** After a failed token request, while callers wait for a token, the next comes this long after the last. */
const DEMAND_RETRY_MS = 900
/** However short its tokens' lives, a credential set's token endpoint is asked at most once a second. */
const MIN_RENEWAL_MS = 1000

/** One token as granted: the token, when it arrived and how long it may be used, whose it is, by which grant. */
export interface Granted {
  readonly accessToken: Secret
  readonly obtainedAt: number
  readonly lifetimeMs: number
  readonly subject: string | undefined
  readonly grant: string
  /** The DPoP key it is bound to, when it is. */
  readonly dpop?: DPoPBinding | undefined
}

/** How tokens are obtained, as the manager sees it: it knows no endpoint, grant or dialect. */
export interface TokenRequester {
  /**
   * One token, asked for now; `now` is the manager's clock, read when the answer
   * arrives. `parent` is the `traceparent` of the request that waits for it, if one does.
   */
  request (now: () => number, parent?: string): Promise<Granted>
  /** Why `request` failed, in one line fit for logs and error bodies: no secret, no token, no body beyond code and message. */
  explain (error: unknown): string
  /** Where tokens are asked for, for log lines. */
  where (): string
}

export interface TokenStatus {
  readonly ready: boolean
  readonly expiresAt: number | undefined
}

export interface TokenManagerOptions {
  readonly log: Logger
  /** Seconds before expiry at which a token counts as expired (`REFRESH_SKEW`). */
  readonly skew: number
  /** The real clock unless a test gives its own. */
  readonly clock?: Clock | undefined
  /** Back-off of the first retry; it doubles up to `maxBackoffMs`. */
  readonly backoffMs?: number | undefined
  readonly maxBackoffMs?: number | undefined
  /** The share of a token's lifetime after which it is renewed: 0.8. */
  readonly renewAt?: number | undefined
}

const GONE = 'this credential set is no longer configured'

/**
 * Holds and renews one credential set's token, and nothing else: fetched at start,
 * renewed at 80% of its lifetime, one request in flight at a time, exponential
 * back-off for renewals that fail while a still-valid token keeps serving, and about
 * one attempt a second while callers wait for a token. How a token is obtained is the
 * requester's (`oauth/token-client.ts`).
 *
 * Events: `fetch` ({ result: 'success' | 'failure' }).
 */
export class TokenManager extends EventEmitter implements TokenSource {
  #requester: TokenRequester
  #skewMs: number
  readonly #log: Logger
  readonly #clock: Clock
  readonly #backoffMs: number
  readonly #maxBackoffMs: number
  readonly #renewAt: number
  /** Bumped by `reconfigure` and `close`: a request sent under an older requester does not give the token held. */
  #revision = 0
  #token: AccessToken | undefined
  #inflight: Promise<AccessToken> | undefined
  #timer: unknown
  #failures = 0
  /** When the last token request started: one a caller waits for comes about a second after it. */
  #attemptedAt = 0
  #lastError: ProxyError | undefined
  #closed = false
  #saidShortLived = false

  constructor (requester: TokenRequester, options: TokenManagerOptions) {
    super()
    this.#requester = requester
    this.#skewMs = options.skew * 1000
    this.#log = options.log
    this.#clock = options.clock ?? REAL_CLOCK
    this.#backoffMs = options.backoffMs ?? 1000
    this.#maxBackoffMs = options.maxBackoffMs ?? 60_000
    this.#renewAt = options.renewAt ?? RENEW_AT
  }

  /** Fetches the first token in the background; `/-/ready` turns 200 once it is held. */
  start (): void {
    this.#renew()
  }

  /**
   * A new requester for this credential set (a reload changed it): the token held is
   * dropped at once and a new one is requested; a request in flight under the old one
   * is sent again under the new one rather than trusted.
   */
  reconfigure (requester: TokenRequester, skew: number): void {
    this.#requester = requester
    this.#skewMs = skew * 1000
    this.#token = undefined
    this.#failures = 0
    this.#lastError = undefined
    this.#revision++
    if (!this.#closed) this.#renew()
  }

  /** No more renewals, and the token held is forgotten: a set removed by a reload is never used again, even by a request on its way. */
  close (): void {
    this.#closed = true
    this.#clock.clearTimeout(this.#timer)
    this.#token = undefined
    this.#revision++
  }

  current (): AccessToken | undefined {
    const token = this.#token
    return token !== undefined && this.#clock.now() < token.staleAt ? token : undefined
  }

  status (): TokenStatus {
    const token = this.current()
    return { ready: token !== undefined, expiresAt: token?.expiresAt }
  }

  /** Why no valid token is held: the last token request failed, or its token was too short-lived to use. */
  lastError (): string | undefined {
    if (this.#lastError !== undefined) return this.#lastError.message
    const held = this.#token
    return held !== undefined && shortLived(held) && this.current() === undefined ? SHORT_LIVED : undefined
  }

  get (parent?: string): Promise<AccessToken> {
    if (this.#closed) return Promise.reject(new ProxyError('token_unavailable', GONE))
    const token = this.current()
    if (token !== undefined) return Promise.resolve(token)
    if (this.#inflight !== undefined) return this.#inflight
    // Requests are waiting for a token: after a failure the next attempt comes about a second after the last,
    // not when the back-off says (that is for renewals nobody waits for), so the proxy is back as soon as the
    // token endpoint is; the callers wait for it.
    if (this.#lastError !== undefined) return this.#fetch(this.#attemptedAt + DEMAND_RETRY_MS - this.#clock.now(), parent)
    // A token too short-lived to use: the next one is asked for a second after it, not at once.
    const held = this.#token
    if (held !== undefined && shortLived(held)) return this.#fetch(held.obtainedAt + MIN_RENEWAL_MS - this.#clock.now(), parent)
    return this.#fetch(0, parent)
  }

  drop (token: AccessToken): void {
    if (this.#token !== token) return
    this.#log.info({ event: 'token_rejected' }, 'upstream rejected the token; getting a new one')
    this.#token = undefined
  }

  #renew (): void {
    this.#fetch().catch(() => {})
  }

  /** The request in flight, or one started now (or after `delayMs`), which every caller until then joins. */
  #fetch (delayMs = 0, parent?: string): Promise<AccessToken> {
    if (this.#inflight !== undefined) return this.#inflight
    const attempt = delayMs > 0 ? new Promise<void>((resolve) => { this.#clock.setTimeout(resolve, delayMs) }).then(async () => await this.#attempt(parent)) : this.#attempt(parent)
    this.#inflight = attempt.finally(() => { this.#inflight = undefined })
    return this.#inflight
  }

  async #attempt (parent?: string): Promise<AccessToken> {
    if (this.#closed) throw new ProxyError('token_unavailable', GONE)
    this.#clock.clearTimeout(this.#timer)
    this.#attemptedAt = this.#clock.now()
    const renewing = this.#token !== undefined
    const revision = this.#revision
    const requester = this.#requester
    let granted: Granted
    try {
      granted = await requester.request(() => this.#clock.now(), parent)
    } catch (error) {
      if (this.#closed) throw new ProxyError('token_unavailable', GONE)
      if (revision !== this.#revision) return await this.#attempt(parent)
      return this.#failed(new ProxyError('token_unavailable', requester.explain(error)))
    }
    if (this.#closed) throw new ProxyError('token_unavailable', GONE)
    if (revision !== this.#revision) return await this.#attempt(parent)
    const token = new AccessToken(granted.accessToken, { ...granted, skewMs: this.#skewMs, renewAt: this.#renewAt })
    this.#token = token
    this.#failures = 0
    this.#lastError = undefined
    this.#log.info({
      event: renewing ? 'token_renewed' : 'token_fetched',
      grant: token.grant,
      subject: token.subject,
      expiresAt: new Date(token.expiresAt).toISOString(),
      expiresInSeconds: Math.round((token.expiresAt - token.obtainedAt) / 1000)
    }, renewing ? 'token renewed' : 'token fetched')
    if (shortLived(token) && !this.#saidShortLived) {
      this.#saidShortLived = true
      this.#log.warn({ event: 'token_short_lived', lifetimeMs: token.expiresAt - token.obtainedAt }, SHORT_LIVED)
    }
    // After the log line: a listener sees the state and the line of this fetch.
    this.emit('fetch', { result: 'success' })
    this.#schedule(Math.max(token.renewAt, token.obtainedAt + MIN_RENEWAL_MS) - this.#clock.now())
    return token
  }

  /** A failed request: said once, the next renewal backed off; a still-valid token keeps serving. */
  #failed (failure: ProxyError): AccessToken {
    this.#lastError = failure
    const delay = this.#backoff()
    this.#log.warn({ event: 'token_failed', endpoint: this.#requester.where(), error: failure.message, retryInMs: delay }, 'token request failed')
    this.emit('fetch', { result: 'failure' })
    this.#schedule(delay)
    const held = this.current()
    if (held !== undefined) return held
    // Retry-After: the next attempt a waiting caller would make.
    throw new ProxyError('token_unavailable', failure.message, Math.ceil(DEMAND_RETRY_MS / 1000))
  }

  #schedule (delay: number): void {
    if (this.#closed) return
    this.#clock.clearTimeout(this.#timer)
    this.#timer = this.#clock.setTimeout(() => this.#renew(), Math.max(0, delay))
  }

  /** 1 s doubling to 60 s, with jitter: half fixed, half random. */
  #backoff (): number {
    const ceiling = Math.min(this.#maxBackoffMs, this.#backoffMs * 2 ** this.#failures)
    this.#failures++
    return Math.round(ceiling / 2 + Math.random() * ceiling / 2)
  }
}

/** A token whose usable life is under the renewal floor: renewed once a second at most, and said once. */
function shortLived (token: AccessToken): boolean {
  return token.staleAt - token.obtainedAt < MIN_RENEWAL_MS
}

const SHORT_LIVED = 'the token endpoint grants tokens that last less than a second, too short to use: it is asked again at most once a second'
