import type { Client, TokenSettings } from './settings.js'
import { readPlatformToken } from './platform-token.js'
import { readSecret, Secret } from '../secret.js'
import { storedRefreshToken } from '../login-store.js'
import { authenticateClient, signedAssertion } from './client-auth.js'
import { checkProviderUrl } from './discovery.js'
import { asObject, type Dialect, type TokenResponse, optionalSecret, optionalSeconds, requireString, type TokenRequest, TokenResponseError, UnsupportedGrant } from './dialect.js'

/** RFC 7523 §2.1's grant type. */
export const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer'
/** RFC 8693 §2.1's grant type. */
export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'

/** OAuth 2.0 token endpoint, RFC 6749 grants, RFC 7523's jwt-bearer and RFC 8693's token exchange (Run:ai's `external_token_exchange`), form-encoded. */
export const oauthForm: Dialect = {
  async buildRequest (settings: TokenSettings, endpoint: URL, refresh: Secret | undefined): Promise<TokenRequest> {
    const credentials = settings.credentials
    const form = new URLSearchParams()
    const expiries: number[] = []
    if (refresh !== undefined) {
      form.set('grant_type', 'refresh_token')
      form.set('refresh_token', refresh.reveal())
    } else if (credentials.grant === 'password') {
      form.set('grant_type', 'password')
      form.set('username', credentials.username)
      form.set('password', readSecret(credentials.password).reveal())
    } else if (credentials.grant === 'refresh_token') {
      form.set('grant_type', 'refresh_token')
      form.set('refresh_token', readSecret(credentials.refreshToken).reveal())
    } else if (credentials.grant === 'client_credentials') {
      form.set('grant_type', 'client_credentials')
    } else if (credentials.grant === 'login') {
      form.set('grant_type', 'refresh_token')
      form.set('refresh_token', storedRefreshToken(credentials.login, credentials.client.id).reveal())
    } else if (credentials.grant === 'jwt_bearer') {
      // RFC 7523 §2.1: the assertion is the grant, signed by the client's key or by someone the endpoint trusts.
      form.set('grant_type', JWT_BEARER)
      form.set('assertion', credentials.assertion !== undefined
        ? readPlatformToken(credentials.assertion, expiries)
        : await signedAssertion(settings, endpoint, (credentials.client as Client).id))
    } else if (credentials.grant === 'token_exchange' && settings.flavour === 'runai') {
      // Run:ai's /api/v2/token: a token issued by the identity provider it is configured with.
      form.set('grant_type', 'external_token_exchange')
      form.set('external_token', readPlatformToken(credentials.subject, expiries))
    } else if (credentials.grant === 'token_exchange') {
      form.set('grant_type', TOKEN_EXCHANGE)
      form.set('subject_token', readPlatformToken(credentials.subject, expiries))
      form.set('subject_token_type', credentials.subjectType)
      if (settings.requestedTokenType !== undefined) form.set('requested_token_type', settings.requestedTokenType)
    } else {
      throw new UnsupportedGrant('oidc', credentials.grant)
    }
    const headers: Record<string, string> = {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json'
    }
    await authenticateClient(settings, { form, headers, endpoint, expiries })
    // A service account's scope travels in its assertion.
    if (settings.scope !== undefined && !settings.serviceAccount) form.set('scope', settings.scope)
    if (settings.audience !== undefined) form.set('audience', settings.audience)
    if (settings.resource !== undefined) form.set('resource', settings.resource)
    for (const [key, value] of settings.params) form.append(key, value)
    return { url: endpoint, headers, body: form.toString(), expiries }
  },

  readResponse (body: unknown): TokenResponse {
    const type = asObject(body).token_type
    const kind = typeof type === 'string' ? type.toLowerCase() : type
    if (kind !== undefined && kind !== 'bearer' && kind !== 'dpop') {
      const named = typeof type === 'string' && /^[A-Za-z_-]{1,20}$/.test(type) ? ` ${type}` : ' of another kind'
      throw new TokenResponseError(`response has token_type${named}, not Bearer or DPoP`)
    }
    return {
      accessToken: new Secret(requireString(body, 'access_token')),
      expiresIn: optionalSeconds(body, 'expires_in'),
      refreshToken: optionalSecret(body, 'refresh_token'),
      bound: kind === 'dpop'
    }
  }
}

/** RFC 8628's grant type: a device login's code, polled for. */
export const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code'

/** A person's login asks for an ID token and a refresh token (`openid offline_access`), and the set's own `SCOPE`. */
export function loginScope (scope: string | undefined): string {
  return [...new Set(['openid', 'offline_access', ...(scope ?? '').split(' ').filter(Boolean)])].join(' ')
}

/** RFC 6749 §4.1.3 with RFC 7636 §4.5: a browser login's code exchanged, with its PKCE verifier. */
export function authorizationCodeGrant (code: string, redirectUri: string, verifier: string): URLSearchParams {
  return new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier })
}

/** RFC 8628 §3.1: a device login begins, for `scope`. */
export function deviceAuthorizationRequest (scope: string): URLSearchParams {
  return new URLSearchParams({ scope })
}

/** RFC 8628 §3.4: the token endpoint asked whether the device login was approved. */
export function deviceCodeGrant (deviceCode: string): URLSearchParams {
  return new URLSearchParams({ grant_type: DEVICE_CODE, device_code: deviceCode })
}

/** RFC 7009 §2.1: a refresh token revoked. */
export function revocationRequest (refreshToken: string): URLSearchParams {
  return new URLSearchParams({ token: refreshToken, token_type_hint: 'refresh_token' })
}

/**
 * RFC 6749 §4.1.1 with RFC 7636 §4.3 and OpenID Connect's `nonce`: where the browser
 * is sent to log in. `challenge` is absent where the code's exchange cannot carry a
 * verifier (Run:ai's token API).
 */
export function authorizationUrl (endpoint: URL, request: { clientId: string, redirectUri: string, scope: string, state: string, nonce: string, challenge: string | undefined }): URL {
  const url = new URL(endpoint.href)
  for (const [name, value] of Object.entries({
    response_type: 'code',
    client_id: request.clientId,
    redirect_uri: request.redirectUri,
    scope: request.scope,
    state: request.state,
    nonce: request.nonce,
    ...(request.challenge === undefined ? {} : { code_challenge: request.challenge, code_challenge_method: 'S256' })
  })) url.searchParams.set(name, value)
  return url
}

/** A device login as begun (RFC 8628 §3.2), checked: what the person is shown, and the timings, bounded. */
export interface DeviceAuthorization {
  readonly deviceCode: string
  readonly userCode: string
  /** Where the person enters the code, and the page that carries it already. */
  readonly page: URL
  readonly complete: URL | undefined
  /** How long the code is valid (a day at most) and how often to poll (every 1 to 60 s), in ms: bounded before they go into timers. */
  readonly expiresInMs: number
  readonly intervalMs: number
}

/** A provider's number of seconds, as a timer may take it: `fallback` unless it is a positive number, else within [min, max]. */
function seconds (value: unknown, fallback: number, min: number, max: number): number {
  const number = Number(value)
  return number > 0 ? Math.min(Math.max(number, min), max) : fallback
}

/**
 * The device authorization endpoint's 200 answer, checked before anything trusts
 * it: a device code and a user code, and pages held to the endpoints' rules (http(s),
 * https for an https issuer). Throws a `TokenResponseError` saying what is wrong.
 */
export function processDeviceAuthorizationResponse (issuer: URL, body: unknown, allowHttp: boolean): DeviceAuthorization {
  const answer = asObject(body)
  const { device_code: deviceCode, user_code: userCode } = answer
  if (typeof deviceCode !== 'string' || deviceCode === '' || typeof userCode !== 'string' || userCode === '') throw new TokenResponseError('without a device code and a user code')
  const page = checkProviderUrl(issuer, answer.verification_uri, 'verification_uri', allowHttp)
  const complete = answer.verification_uri_complete === undefined ? undefined : checkProviderUrl(issuer, answer.verification_uri_complete, 'verification_uri_complete', allowHttp)
  return { deviceCode, userCode, page, complete, expiresInMs: seconds(answer.expires_in, 600, 1, 86_400) * 1000, intervalMs: seconds(answer.interval, 5, 1, 60) * 1000 }
}

/** How a device login's poll was answered (RFC 8628 §3.5): granted, wait (`slow_down`: 5 s more), or ended. */
export function devicePollOutcome (status: number, body: unknown): 'granted' | 'pending' | 'slow_down' | 'expired' | 'denied' | 'failed' {
  if (status === 200) return 'granted'
  const error = asObject(body).error
  if (error === 'authorization_pending') return 'pending'
  if (error === 'slow_down') return 'slow_down'
  if (error === 'expired_token') return 'expired'
  if (error === 'access_denied') return 'denied'
  return 'failed'
}
