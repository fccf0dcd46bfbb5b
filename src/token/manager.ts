import { EventEmitter } from 'node:events'
import { decodeJwt } from 'jose'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import { type DialectName, type Endpoint, type Login, PREFIX, secretsOf, type TokenSettings } from '../config.js'
import { displayUrl, ProxyError } from '../errors.js'
import { readSecret, type Secret, type SecretSource } from '../secret.js'
import { KeyError } from '../keys.js'
import { NoStoredLogin, readLogin, saveLogin } from '../login/store.js'
import { PrivacyError } from '../private-file.js'
import { apiconnect } from './apiconnect.js'
import { type Dialect, fieldNames, type Grant, summariseError, TokenResponseError } from './dialect.js'
import { scrubSecrets } from './redact.js'
import { oidc } from './oidc.js'
import { discover, DiscoveryError } from '../oauth/discovery.js'
import { networkReason, oauthRequest } from '../oauth/http.js'
import { runai, runaiAppToken } from './runai.js'

const DIALECTS: Record<DialectName, Dialect> = { oauth: oidc, 'runai-v1': runai, 'runai-apptoken': runaiAppToken, apiconnect }

/** Assumed lifetime when neither `expires_in` nor a JWT `exp` says. */
const DEFAULT_LIFETIME_MS = 300_000
const RENEW_AT = 0.8
const MAX_SKEW_SHARE = 0.1
/** The background renewal comes at least this often, however long a token lasts (and a timer cannot wait longer than 2^31-1 ms). */
const MAX_RENEW_DELAY_MS = 24 * 3600_000
/** A longer lifetime (a token that does not expire, 1e13 s) is held as this: its expiry stays a date a log line and /-/ready can show. */
const MAX_LIFETIME_MS = 1000 * 365 * 24 * 3600_000
/** After a failed token request, while callers wait for a token, the next comes this long after the last. */
const DEMAND_RETRY_MS = 900
/** However short its tokens' lives, a credential set's token endpoint is asked at most once a second. */
const MIN_RENEWAL_MS = 1000
/** A larger token would be refused by every upstream (431): Node's whole header block is 16 KiB by default, nginx's line 8 KiB. */
const MAX_TOKEN_BYTES = 64 * 1024
/** RFC 6750 §2.1 `b64token`: what can follow `Bearer ` in a header. */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/

/** A bearer token that cannot print itself. */
export class AccessToken {
  readonly #authorization: string
  readonly obtainedAt: number
  readonly expiresAt: number
  /** From here on the token counts as expired (`REFRESH_SKEW`, at most 10% of its lifetime). */
  readonly staleAt: number
  readonly renewAt: number
  readonly subject: string | undefined

  /** The grant that produced it: the configured one, or `refresh_token` from the previous response. */
  readonly grant: string

  constructor (value: Secret, details: { obtainedAt: number, lifetimeMs: number, skewMs: number, renewAt: number, subject: string | undefined, grant: string }) {
    const { obtainedAt, lifetimeMs } = details
    this.#authorization = `Bearer ${value.reveal()}`
    this.obtainedAt = obtainedAt
    this.expiresAt = obtainedAt + lifetimeMs
    this.staleAt = this.expiresAt - Math.min(details.skewMs, lifetimeMs * MAX_SKEW_SHARE)
    this.renewAt = obtainedAt + Math.min(lifetimeMs * details.renewAt, MAX_RENEW_DELAY_MS)
    this.subject = details.subject
    this.grant = details.grant
  }

  /** The `Authorization` header value. */
  get authorization (): string { return this.#authorization }
  /** The token alone, for `bearer-proxy token` and `TOKEN_FILE`. */
  reveal (): string { return this.#authorization.slice('Bearer '.length) }

  toJSON (): object { return { expiresAt: new Date(this.expiresAt).toISOString() } }
  toString (): string { return '[access token]' }
}

export interface TokenStatus {
  readonly ready: boolean
  readonly expiresAt: number | undefined
}

/** What the proxy needs of tokens; it knows nothing of how they are obtained. */
export interface TokenSource {
  /** The held token while it is valid; never starts a request. */
  current (): AccessToken | undefined
  /** A valid token: the held one, the one being fetched, or a new one. */
  get (): Promise<AccessToken>
  /** An upstream refused `token` for itself: if it is still held, the next caller gets a new one. */
  drop (token: AccessToken): void
}

/** Time as a token manager sees it: the real clock, or a test's, so that renewal, back-off and expiry run on fake time. */
export interface Clock {
  now (): number
  /** Runs `run` after `ms`; the timer does not keep the process alive. */
  setTimeout (run: () => void, ms: number): unknown
  clearTimeout (timer: unknown): void
}

export const REAL_CLOCK: Clock = {
  now: () => Date.now(),
  setTimeout: (run, ms) => setTimeout(run, ms).unref(),
  clearTimeout: (timer) => { clearTimeout(timer as NodeJS.Timeout) }
}

export interface TokenManagerOptions {
  readonly dispatcher: Dispatcher
  readonly log: Logger
  /** The real clock unless a test gives its own. */
  readonly clock?: Clock
  /** Back-off of the first retry; it doubles up to `maxBackoffMs`. */
  readonly backoffMs?: number
  readonly maxBackoffMs?: number
  /** The share of a token's lifetime after which it is renewed: 0.8. */
  readonly renewAt?: number
}

/**
 * Gets, holds and renews one token: fetched at start, renewed at 80% of its
 * lifetime, one request in flight at a time, exponential back-off for renewals
 * that fail while a still-valid token keeps serving, and about one attempt a
 * second while callers wait for a token.
 *
 * Events: `fetch` ({ result: 'success' | 'failure' }).
 */
export class TokenManager extends EventEmitter implements TokenSource {
  #settings: TokenSettings
  #dispatcher: Dispatcher
  readonly #log: Logger
  readonly #backoffMs: number
  readonly #maxBackoffMs: number
  readonly #renewAt: number
  #secrets: SecretSource[]
  /** Bumped by `reconfigure`: a request sent under older settings does not give the token held. */
  #generation = 0

  #token: AccessToken | undefined
  #refresh: Secret | undefined
  /** Where tokens are asked for: configured, discovered, or the first generation that answered. */
  #endpoint: Endpoint | undefined
  /** The endpoint of the request in flight or last sent, for messages while none is chosen. */
  #asked: Endpoint | undefined
  #inflight: Promise<AccessToken> | undefined
  #timer: unknown
  readonly #clock: Clock
  #failures = 0
  /** When the last token request started: one a caller waits for comes about a second after it. */
  #attemptedAt = 0
  #lastError: ProxyError | undefined
  #closed = false
  #saidShortLived = false

  constructor (settings: TokenSettings, options: TokenManagerOptions) {
    super()
    this.#settings = settings
    this.#dispatcher = options.dispatcher
    this.#log = options.log
    this.#backoffMs = options.backoffMs ?? 1000
    this.#maxBackoffMs = options.maxBackoffMs ?? 60_000
    this.#renewAt = options.renewAt ?? RENEW_AT
    this.#clock = options.clock ?? REAL_CLOCK
    this.#secrets = secretsOf(settings.credentials)
    if (settings.endpoint.kind === 'url') this.#endpoint = settings.endpoint.endpoint
  }

  /** Fetches the first token in the background; `/-/ready` turns 200 once it is held. */
  start (): void {
    this.#renew()
  }

  /**
   * New settings for this credential set (a reload), and the dispatcher its token
   * requests now go out by (a new client certificate): the token held, and any refresh
   * token, are dropped at once and a new one is requested; a request in flight under
   * the old settings is sent again under the new ones rather than trusted.
   */
  reconfigure (settings: TokenSettings, dispatcher?: Dispatcher): void {
    this.#settings = settings
    if (dispatcher !== undefined) this.#dispatcher = dispatcher
    this.#secrets = secretsOf(settings.credentials)
    this.#endpoint = settings.endpoint.kind === 'url' ? settings.endpoint.endpoint : undefined
    this.#asked = undefined
    this.#token = undefined
    this.#refresh = undefined
    this.#failures = 0
    this.#lastError = undefined
    this.#generation++
    if (!this.#closed) this.#renew()
  }

  /**
   * No more renewals, and the token held is forgotten: a credential set removed by a
   * reload is never used again, even by a request that was on its way.
   */
  close (): void {
    this.#closed = true
    this.#clock.clearTimeout(this.#timer)
    this.#token = undefined
    this.#refresh = undefined
    this.#generation++
  }

  /** The held token while it is still valid; never starts a request. */
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

  /** A valid token: the held one, the one being fetched, or a new one. */
  get (): Promise<AccessToken> {
    if (this.#closed) return Promise.reject(new ProxyError('token_unavailable', 'this credential set is no longer configured'))
    const token = this.current()
    if (token !== undefined) return Promise.resolve(token)
    if (this.#inflight !== undefined) return this.#inflight
    // Requests are waiting for a token: after a failure the next attempt comes about a second after the last,
    // not when the back-off says (that is for renewals nobody waits for), so the proxy is back as soon as the
    // token endpoint is; the callers wait for it.
    if (this.#lastError !== undefined) return this.#fetch(this.#attemptedAt + DEMAND_RETRY_MS - this.#clock.now())
    // A token too short-lived to use: the next one is asked for a second after it, not at once.
    const held = this.#token
    if (held !== undefined && shortLived(held)) return this.#fetch(held.obtainedAt + MIN_RENEWAL_MS - this.#clock.now())
    return this.#fetch()
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
  #fetch (delayMs = 0): Promise<AccessToken> {
    if (this.#inflight !== undefined) return this.#inflight
    const attempt = delayMs > 0 ? new Promise<void>((resolve) => { this.#clock.setTimeout(resolve, delayMs) }).then(async () => await this.#attempt()) : this.#attempt()
    this.#inflight = attempt.finally(() => { this.#inflight = undefined })
    return this.#inflight
  }

  async #attempt (): Promise<AccessToken> {
    if (this.#closed) throw new ProxyError('token_unavailable', 'this credential set is no longer configured')
    this.#clock.clearTimeout(this.#timer)
    this.#attemptedAt = this.#clock.now()
    const renewing = this.#token !== undefined
    const generation = this.#generation
    let token: AccessToken
    try {
      token = await this.#obtain()
    } catch (error) {
      if (this.#closed) throw new ProxyError('token_unavailable', 'this credential set is no longer configured')
      if (generation !== this.#generation) return await this.#attempt()
      const failure = this.#failure(error)
      this.#lastError = failure
      const delay = this.#backoff()
      this.#log.warn({ event: 'token_failed', endpoint: this.#endpointName(), error: failure.message, retryInMs: delay },
        'token request failed')
      this.emit('fetch', { result: 'failure' })
      this.#schedule(delay)
      const held = this.current()
      if (held !== undefined) return held
      // Retry-After: the next attempt a waiting caller would make.
      throw new ProxyError('token_unavailable', failure.message, Math.ceil(DEMAND_RETRY_MS / 1000))
    }
    if (this.#closed) throw new ProxyError('token_unavailable', 'this credential set is no longer configured')
    if (generation !== this.#generation) return await this.#attempt()
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

  async #obtain (): Promise<AccessToken> {
    const generations = this.#settings.endpoint.kind === 'generations' && this.#endpoint === undefined ? this.#settings.endpoint.endpoints : undefined
    const endpoint = generations === undefined ? this.#endpoint ?? await this.#discover() : undefined
    let grant: Grant | undefined
    let used: string = this.#settings.credentials.grant
    const refresh = this.#refresh
    if (refresh !== undefined && endpoint !== undefined) {
      try {
        grant = await this.#exchange(endpoint, refresh)
        used = 'refresh_token'
      } catch (error) {
        this.#log.info({ event: 'token_refresh_failed', error: this.#failure(error).message },
          'refresh token not accepted; using the configured grant')
        this.#refresh = undefined
      }
    }
    grant ??= endpoint === undefined ? await this.#firstGeneration(generations ?? []) : await this.#exchange(endpoint, undefined)
    const { credentials } = this.#settings
    if (credentials.grant === 'login') {
      // A rotated refresh token is kept at once, where the next request (of any process) reads it.
      if (grant.refreshToken !== undefined) this.#keepLogin(credentials.login, credentials.client.id, grant.refreshToken)
    } else if (grant.refreshToken !== undefined) {
      this.#refresh = grant.refreshToken
    }

    const obtainedAt = this.#clock.now()
    const claims = readClaims(grant.accessToken)
    const lifetime = lifetimeOf(grant.expiresIn, claims.exp, obtainedAt)
    return new AccessToken(grant.accessToken, {
      obtainedAt, lifetimeMs: lifetime, skewMs: this.#settings.refreshSkew * 1000, renewAt: this.#renewAt, subject: claims.sub, grant: used
    })
  }

  /**
   * Asks each generation's endpoint in turn: one that answers 404 or 405 does not
   * exist on this server, the next is tried; the first that answers anything else is
   * kept for the life of the process (a refusal there is the answer, not a reason to
   * try an older endpoint).
   */
  async #firstGeneration (endpoints: readonly Endpoint[]): Promise<Grant> {
    for (const [index, endpoint] of endpoints.entries()) {
      try {
        const grant = await this.#exchange(endpoint, undefined)
        this.#choose(endpoint)
        return grant
      } catch (error) {
        const absent = error instanceof EndpointError && (error.status === 404 || error.status === 405)
        if (absent && index < endpoints.length - 1) {
          this.#log.debug({ event: 'token_endpoint_absent', endpoint: displayUrl(endpoint.url), status: error.status }, 'no token endpoint there; trying the older one')
          continue
        }
        if (absent) throw new StatedFailure(`no token endpoint answered: ${endpoints.map((tried) => displayUrl(tried.url)).join(' and ')} answered 404 or 405; is ${PREFIX}UPSTREAM the control plane's URL?`)
        if (error instanceof EndpointError || error instanceof TokenResponseError) this.#choose(endpoint)
        throw error
      }
    }
    throw new Error('no endpoint')
  }

  #choose (endpoint: Endpoint): void {
    this.#endpoint = endpoint
    this.#log.info({ event: 'token_endpoint_chosen', endpoint: displayUrl(endpoint.url) }, `tokens come from ${displayUrl(endpoint.url)}`)
  }

  async #exchange (endpoint: Endpoint, refresh: Secret | undefined): Promise<Grant> {
    this.#asked = endpoint
    const dialect = DIALECTS[endpoint.dialect]
    let built
    try {
      built = await dialect.buildRequest(this.#settings, endpoint.url, refresh)
    } catch (error) {
      if (error instanceof KeyError) throw new KeyFileError(error.message)
      if (error instanceof NoStoredLogin || error instanceof PrivacyError) throw new StatedFailure(`${error.message}; no token request was sent`)
      throw new SecretFileError((error as NodeJS.ErrnoException).code)
    }
    this.#log.trace({ event: 'token_request', endpoint: displayUrl(built.url), grant: refresh === undefined ? this.#settings.credentials.grant : 'refresh_token' },
      'sending token request')
    const { status, body } = await this.#call(built.url, 'POST', built.headers, built.body)
    this.#log.trace({ event: 'token_response', status, fields: fieldNames(body) }, 'token endpoint answered')
    if (status < 200 || status > 299) throw new EndpointError(status, summariseError(body, status))
    if (body === undefined) throw new TokenResponseError('with a body that is not JSON', 'unreadable_body')
    const grant = dialect.readResponse(body)
    checkBearer(grant.accessToken)
    return grant
  }

  /** The token endpoint of the first issuer whose discovery document exists (a 404 moves on to the next). */
  async #discover (): Promise<Endpoint> {
    const { endpoint } = this.#settings
    if (endpoint.kind !== 'issuer') throw new Error('no endpoint')
    let server
    try {
      server = await discover(endpoint.issuers, { dispatcher: this.#dispatcher, timeout: this.#settings.timeout, allowHttp: this.#settings.allowHttpTokenEndpoint, scrub: (text) => this.#scrub(text) })
    } catch (error) {
      if (error instanceof DiscoveryError) throw new StatedFailure(error.message)
      throw error
    }
    this.#endpoint = { url: server.tokenEndpoint, dialect: 'oauth' }
    this.#log.info({ event: 'token_endpoint_discovered', issuer: displayUrl(server.issuer), endpoint: displayUrl(this.#endpoint.url) }, 'token endpoint discovered')
    return this.#endpoint
  }

  async #call (url: URL, method: 'GET' | 'POST', headers: Record<string, string>, body: string | undefined): Promise<{ status: number, body: unknown }> {
    return await oauthRequest(url, { method, headers, body, dispatcher: this.#dispatcher, timeout: this.#settings.timeout, scrub: (text) => this.#scrub(text) })
  }

  #endpointName (): string {
    const { endpoint } = this.#settings
    const known = this.#endpoint ?? this.#asked
    if (known !== undefined) return displayUrl(known.url)
    return displayUrl(endpoint.kind === 'issuer' ? endpoint.issuers[0] : endpoint.kind === 'url' ? endpoint.endpoint.url : endpoint.endpoints[0].url)
  }

  /** Any failure as a one-line message fit for logs and error bodies: no secret, no token, no body beyond code and message. */
  #keepLogin (login: Login, clientId: string, refreshToken: Secret): void {
    try {
      saveLogin(login.store, login.issuer, clientId, refreshToken)
    } catch (error) {
      this.#log.warn({ event: 'login_not_saved', path: login.store, error: error instanceof PrivacyError ? error.message : (error as NodeJS.ErrnoException).code ?? 'error' },
        'could not save the rotated refresh token; the next renewal may need bearer-proxy login again')
    }
  }

  #failure (error: unknown): ProxyError {
    const where = `token endpoint ${this.#endpointName()}`
    let message: string
    if (error instanceof EndpointError) {
      message = `${where} answered ${error.status}${error.summary === undefined ? '' : ` ${error.summary}`}`
      // A refused stored login: the person has to log in again. OAuth says invalid_grant; Run:ai's token API, 400 or 401.
      const refused = this.#settings.flavour === 'runai' ? error.status === 400 || error.status === 401 : error.summary?.startsWith('invalid_grant') === true
      if (this.#settings.credentials.grant === 'login' && refused) {
        message += '; the stored login is no longer accepted: run bearer-proxy login again'
      }
    } else if (error instanceof StatedFailure) {
      message = error.message
    } else if (error instanceof TokenResponseError) {
      message = `${where} answered ${error.code === 'unreadable_body' ? '' : 'with an unusable response: '}${error.message}`
    } else {
      message = `${where} is unreachable: ${networkReason(error)}`
    }
    return new ProxyError('token_unavailable', this.#scrub(message))
  }

  /** Removes every configured secret, and the refresh token in use, in any spelling an endpoint may echo. */
  #scrub (text: string): string {
    const values: string[] = []
    for (const source of this.#secrets) {
      try {
        values.push(readSecret(source).reveal())
      } catch {}
    }
    if (this.#refresh !== undefined) values.push(this.#refresh.reveal())
    const { credentials } = this.#settings
    if (credentials.grant === 'login') {
      try {
        const stored = readLogin(credentials.login.store, credentials.login.issuer, credentials.client.id)
        if (stored !== undefined) values.push(stored.reveal())
      } catch {}
    }
    return scrubSecrets(text, values, credentials.client?.id)
  }
}

/** A failure whose message already says everything, in the user's words. */
class StatedFailure extends Error {}

class SecretFileError extends StatedFailure {
  constructor (code: string | undefined) {
    super(`cannot read a secret file (${code ?? 'error'}); no token request was sent`)
  }
}

class KeyFileError extends StatedFailure {
  constructor (reason: string) {
    super(`the client's key file ${reason}; no token request was sent`)
  }
}

class EndpointError extends Error {
  constructor (readonly status: number, readonly summary: string | undefined) {
    super(`answered ${status}`)
  }
}

/**
 * How long a granted token may be used, in ms: the earlier of `expires_in` (counted
 * from the response's arrival) and the JWT `exp` (whole seconds of the issuer's
 * clock, so `expires_in` alone can be up to a second late), else 300 s.
 */
export function lifetimeOf (expiresIn: number | undefined, exp: number | undefined, now: number): number {
  const candidates: number[] = []
  if (expiresIn !== undefined) candidates.push(expiresIn * 1000)
  if (exp !== undefined) candidates.push(exp * 1000 - now)
  const lifetime = candidates.length === 0 ? DEFAULT_LIFETIME_MS : Math.min(...candidates)
  if (!(lifetime > 0)) throw new TokenResponseError('the token it granted has already expired (is the clock right?)')
  return Math.min(lifetime, MAX_LIFETIME_MS)
}

/** A token whose usable life is under the renewal floor: renewed once a second at most, and said once. */
function shortLived (token: AccessToken): boolean {
  return token.staleAt - token.obtainedAt < MIN_RENEWAL_MS
}

const SHORT_LIVED = 'the token endpoint grants tokens that last less than a second, too short to use: it is asked again at most once a second'

/** The access token as granted, if it can be sent as `Authorization: Bearer <token>` (RFC 6750 \`b64token\`). */
export function checkBearer (token: Secret): Secret {
  const size = Buffer.byteLength(token.reveal())
  if (size > MAX_TOKEN_BYTES) {
    throw new TokenResponseError(`the access token it granted is ${Math.ceil(size / 1024)} KiB, more than the ${MAX_TOKEN_BYTES / 1024} KiB a request header can carry`)
  }
  if (!B64TOKEN.test(token.reveal())) {
    throw new TokenResponseError('the access token it granted has characters a bearer token cannot carry (RFC 6750)')
  }
  return token
}

function readClaims (token: Secret): { exp: number | undefined, sub: string | undefined } {
  try {
    const claims = decodeJwt(token.reveal())
    return { exp: typeof claims.exp === 'number' ? claims.exp : undefined, sub: typeof claims.sub === 'string' ? claims.sub : undefined }
  } catch {
    return { exp: undefined, sub: undefined }
  }
}
