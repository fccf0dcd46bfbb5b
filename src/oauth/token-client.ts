import { readFileSync } from 'node:fs'
import { decodeJwt } from 'jose'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import { displayUrl } from '../errors.js'
import { KeyError } from '../keys.js'
import { NoStoredLogin, readLogin, readLoginKey, saveLogin } from '../login-store.js'
import { PREFIX } from '../prefix.js'
import { PrivacyError } from '../private-file.js'
import { readSecret, type Secret, type SecretSource } from '../secret.js'
import type { Granted, TokenRequester } from '../token/manager.js'
import { apiconnect } from './apiconnect.js'
import { type Dialect, fieldNames, summariseError, type TokenResponse, TokenResponseError } from './dialect.js'
import { discover, DiscoveryError } from './discovery.js'
import { DPoPKey, tokenHash, withProof } from './dpop.js'
import { oauthForm } from './form.js'
import { networkReason, oauthRequest } from './http.js'
import { scrubSecrets } from './redact.js'
import { runai, runaiAppToken } from './runai.js'
import { PlatformTokenError } from './platform-token.js'
import { type DialectName, type Endpoint, type Login, platformTokensOf, secretsOf, type TokenSettings } from './settings.js'

const DIALECTS: Readonly<Record<DialectName, Dialect>> = { oauth: oauthForm, 'runai-v1': runai, 'runai-apptoken': runaiAppToken, apiconnect }

/** Assumed lifetime when neither `expires_in` nor a JWT `exp` says. */
const DEFAULT_LIFETIME_MS = 300_000
/** A longer lifetime (a token that does not expire, 1e13 s) is held as this: its expiry stays a date a log line and /-/ready can show. */
const MAX_LIFETIME_MS = 1000 * 365 * 24 * 3600_000
/** A larger token would be refused by every upstream (431): Node's whole header block is 16 KiB by default, nginx's line 8 KiB. */
const MAX_TOKEN_BYTES = 64 * 1024
/** RFC 6750 §2.1 `b64token`: what can follow `Bearer ` in a header. */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/

/**
 * Asks one credential set's token endpoint for tokens: which endpoint (configured,
 * discovered from the issuer, or the first API version that answers), the request in
 * the flavour's dialect, the answer checked before it is trusted, the refresh token a
 * response carries used for the next request, and a rotated login's refresh token
 * stored. Made anew for every change of the set's settings; the token manager holds
 * and renews what it returns.
 */
export class TokenClient implements TokenRequester {
  readonly #settings: TokenSettings
  readonly #dispatcher: Dispatcher
  readonly #log: Logger
  readonly #secrets: SecretSource[]
  #refresh: Secret | undefined
  /** Where tokens are asked for: configured, discovered, or the first API version that answered. */
  #endpoint: Endpoint | undefined
  /** The endpoint of the request in flight or last sent, for messages while none is chosen. */
  #asked: Endpoint | undefined

  /** The set's DPoP key, when `DPOP` is on: every token request carries a proof made with it. */
  readonly #dpop: DPoPKey | undefined
  #saidUnbound = false

  constructor (settings: TokenSettings, dispatcher: Dispatcher, log: Logger, dpop?: DPoPKey) {
    this.#settings = settings
    this.#dispatcher = dispatcher
    this.#log = log
    this.#dpop = dpop
    this.#secrets = secretsOf(settings.credentials)
    if (settings.endpoint.kind === 'url') this.#endpoint = settings.endpoint.endpoint
  }

  async request (now: () => number): Promise<Granted> {
    const versions = this.#settings.endpoint.kind === 'versions' && this.#endpoint === undefined ? this.#settings.endpoint.endpoints : undefined
    const endpoint = versions === undefined ? this.#endpoint ?? await this.#discover() : undefined
    let response: Exchanged | undefined
    let used: string = this.#settings.credentials.grant
    const refresh = this.#refresh
    if (refresh !== undefined && endpoint !== undefined) {
      try {
        response = await this.#exchange(endpoint, refresh)
        used = 'refresh_token'
      } catch (error) {
        this.#log.info({ event: 'token_refresh_failed', error: this.explain(error) }, 'refresh token not accepted; using the configured grant')
        this.#refresh = undefined
      }
    }
    response ??= endpoint === undefined ? await this.#firstAnswering(versions ?? []) : await this.#exchange(endpoint, undefined)
    const { credentials } = this.#settings
    if (credentials.grant === 'login') {
      // A rotated refresh token is kept at once, where the next request (of any process) reads it.
      if (response.refreshToken !== undefined) this.#keepLogin(credentials.login, credentials.client.id, response.refreshToken)
    } else if (response.refreshToken !== undefined) {
      this.#refresh = response.refreshToken
    }
    const obtainedAt = now()
    const claims = readClaims(response.accessToken)
    // Renewed before the platform's token it was granted for expires, whatever its own lifetime.
    const platform = Math.min(...response.expiries) - obtainedAt
    const lifetimeMs = Math.max(1, Math.min(lifetimeOf(response.expiresIn, claims.exp, obtainedAt), platform))
    const dpop = response.bound === true && response.key !== undefined ? { signer: response.key, ath: tokenHash(response.accessToken.reveal()) } : undefined
    return { accessToken: response.accessToken, obtainedAt, lifetimeMs, subject: claims.sub, grant: used, dpop }
  }

  where (): string {
    const { endpoint } = this.#settings
    const known = this.#endpoint ?? this.#asked
    if (known !== undefined) return displayUrl(known.url)
    return displayUrl(endpoint.kind === 'issuer' ? endpoint.issuers[0] : endpoint.kind === 'url' ? endpoint.endpoint.url : endpoint.endpoints[0].url)
  }

  explain (error: unknown): string {
    const where = `token endpoint ${this.where()}`
    let message: string
    if (error instanceof EndpointError) {
      message = `${where} answered ${error.status}${error.summary === undefined ? '' : ` ${error.summary}`}`
      // A refused stored login: the person has to log in again. OAuth says invalid_grant; Run:ai's token API, 400 or 401.
      const refused = this.#settings.flavour === 'runai' ? error.status === 400 || error.status === 401 : error.summary?.startsWith('invalid_grant') === true
      if (this.#settings.credentials.grant === 'login' && refused) message += '; the stored login is no longer accepted: run bearer-proxy login again'
    } else if (error instanceof StatedFailure) {
      message = error.message
    } else if (error instanceof TokenResponseError) {
      message = `${where} answered ${error.code === 'unreadable_body' ? '' : 'with an unusable response: '}${error.message}`
    } else {
      message = `${where} is unreachable: ${networkReason(error)}`
    }
    return this.#scrub(message)
  }

  /**
   * Asks each API version's endpoint in turn: one that answers 404 or 405 does not
   * exist on this server, the next is tried; the first that answers anything else is
   * kept for the life of the client (a refusal there is the answer, not a reason to
   * try an older endpoint).
   */
  async #firstAnswering (endpoints: readonly Endpoint[]): Promise<Exchanged> {
    for (const [index, endpoint] of endpoints.entries()) {
      try {
        const response = await this.#exchange(endpoint, undefined)
        this.#choose(endpoint)
        return response
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

  /** One token request in the endpoint's dialect, and its answer checked: a grant that can be sent as a bearer token, or why not. */
  async #exchange (endpoint: Endpoint, refresh: Secret | undefined): Promise<Exchanged> {
    this.#asked = endpoint
    const dialect = DIALECTS[endpoint.dialect]
    let built
    try {
      built = await dialect.buildRequest(this.#settings, endpoint.url, refresh)
    } catch (error) {
      if (error instanceof KeyError) throw new StatedFailure(`the client's key file ${error.message}; no token request was sent`)
      if (error instanceof PlatformTokenError) throw new StatedFailure(`${error.message}; no token request was sent`)
      if (error instanceof NoStoredLogin || error instanceof PrivacyError) throw new StatedFailure(`${error.message}; no token request was sent`)
      throw new StatedFailure(`cannot read a secret file (${(error as NodeJS.ErrnoException).code ?? 'error'}); no token request was sent`)
    }
    this.#log.trace({ event: 'token_request', endpoint: displayUrl(built.url), grant: refresh === undefined ? this.#settings.credentials.grant : 'refresh_token' }, 'sending token request')
    const key = this.#keyFor()
    const { status, body } = await this.#post(built.url, built.headers, built.body, key)
    this.#log.trace({ event: 'token_response', status, fields: fieldNames(body) }, 'token endpoint answered')
    if (status < 200 || status > 299) throw new EndpointError(status, summariseError(body, status))
    if (body === undefined) throw new TokenResponseError('with a body that is not JSON', 'unreadable_body')
    const response = dialect.readResponse(body)
    checkBearer(response.accessToken)
    if (response.bound === true && key === undefined) throw new TokenResponseError('the token it granted is DPoP-bound (token_type DPoP), but no DPoP proof was sent: set BEARER_PROXY_DPOP=true')
    if (key !== undefined && response.bound !== true) {
      if (this.#settings.dpop === 'required') throw new TokenResponseError('the token it granted is not DPoP-bound (token_type Bearer), and BEARER_PROXY_DPOP=required')
      if (!this.#saidUnbound) {
        this.#saidUnbound = true
        this.#log.warn({ event: 'dpop_not_bound', endpoint: displayUrl(built.url) }, 'the token endpoint did not bind the token to the DPoP key (token_type Bearer): it is used as a bearer token')
      }
    }
    return { ...response, expiries: built.expiries ?? [], key }
  }

  /**
   * The DPoP key of this request: the set's (`DPOP_KEY_FILE`, or made at start), or
   * for a login without a key file, the one kept with the login, read now as its
   * refresh token is (another process may have logged in again).
   */
  #keyFor (): DPoPKey | undefined {
    const { credentials } = this.#settings
    if (this.#settings.dpop === 'off' || this.#settings.dpopKeyFile !== undefined || credentials.grant !== 'login') return this.#dpop
    try {
      const jwk = readLoginKey(credentials.login.store, credentials.login.issuer, credentials.client.id)
      if (jwk !== undefined) return DPoPKey.fromJwk(jwk)
    } catch {}
    return this.#dpop
  }

  /** A token request, with a DPoP proof when there is a key (`withProof`: the server's nonce answered by one retry). */
  async #post (url: URL, headers: Record<string, string>, body: string, key: DPoPKey | undefined): Promise<{ status: number, body: unknown }> {
    if (key === undefined) return await oauthRequest(url, { method: 'POST', headers, body, ...this.#call() })
    return await withProof(key, url, async (proof) => await oauthRequest(url, { method: 'POST', headers: { ...headers, dpop: proof }, body, ...this.#call() }))
  }

  /** The token endpoint of the first issuer whose discovery document exists (a 404 moves on to the next). */
  async #discover (): Promise<Endpoint> {
    const { endpoint } = this.#settings
    if (endpoint.kind !== 'issuer') throw new Error('no endpoint')
    let server
    try {
      server = await discover(endpoint.issuers, { ...this.#call(), allowHttp: this.#settings.allowHttpTokenEndpoint })
    } catch (error) {
      if (error instanceof DiscoveryError) throw new StatedFailure(error.message)
      throw error
    }
    this.#endpoint = { url: server.tokenEndpoint, dialect: 'oauth' }
    this.#log.info({ event: 'token_endpoint_discovered', issuer: displayUrl(server.issuer), endpoint: displayUrl(this.#endpoint.url) }, 'token endpoint discovered')
    return this.#endpoint
  }

  /** How every call of this client goes out: its dispatcher, its deadline, its error answers scrubbed. */
  #call (): { dispatcher: Dispatcher, timeout: number, scrub: (text: string) => string } {
    return { dispatcher: this.#dispatcher, timeout: this.#settings.timeout, scrub: (text) => this.#scrub(text) }
  }

  #keepLogin (login: Login, clientId: string, refreshToken: Secret): void {
    try {
      saveLogin(login.store, login.issuer, clientId, refreshToken)
    } catch (error) {
      this.#log.warn({ event: 'login_not_saved', path: login.store, error: error instanceof PrivacyError ? error.message : (error as NodeJS.ErrnoException).code ?? 'error' },
        'could not save the rotated refresh token; the next renewal may need bearer-proxy login again')
    }
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
    for (const token of platformTokensOf(this.#settings)) {
      try {
        values.push(readFileSync(token.file, 'utf8').trim())
      } catch {}
    }
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

/** A token response, and when the platform's tokens its request carried expire (ms). */
type Exchanged = TokenResponse & { readonly expiries: readonly number[], readonly key: DPoPKey | undefined }

/** A failure whose message already says everything, in the user's words. */
class StatedFailure extends Error {}

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
