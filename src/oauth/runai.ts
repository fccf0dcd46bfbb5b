import type { TokenSettings } from './settings.js'
import { storedRefreshToken } from '../login-store.js'
import { readSecret, Secret } from '../secret.js'
import { readPlatformToken } from './platform-token.js'
import { type Dialect, type TokenResponse, JSON_HEADERS, optionalSecret, requireString, secretOf, UnsupportedGrant } from './dialect.js'

/** Run:ai control plane `POST /api/v1/token` (OpenAPI 2.22, TokenRequest / TokenResponse). */
export const runai: Dialect = {
  buildRequest (settings: TokenSettings, endpoint: URL, refresh: Secret | undefined) {
    const credentials = settings.credentials
    const expiries: number[] = []
    let body: Record<string, string>
    if (refresh !== undefined) {
      body = { grantType: 'refresh_token', refreshToken: refresh.reveal() }
    } else if (credentials.grant === 'password') {
      body = { grantType: 'password', username: credentials.username, password: readSecret(credentials.password).reveal() }
    } else if (credentials.grant === 'refresh_token') {
      body = { grantType: 'refresh_token', refreshToken: readSecret(credentials.refreshToken).reveal() }
    } else if (credentials.grant === 'app_token') {
      body = { grantType: 'app_token', appID: credentials.client.id, appSecret: readSecret(credentials.client.secret).reveal() }
    } else if (credentials.grant === 'login') {
      body = { grantType: 'refresh_token', refreshToken: storedRefreshToken(credentials.login, credentials.client.id).reveal() }
    } else if (credentials.grant === 'client_credentials' && credentials.client !== undefined) {
      body = { grantType: 'client_credentials', clientID: credentials.client.id, clientSecret: readSecret(secretOf(credentials.client)).reveal() }
    } else if (credentials.grant === 'token_exchange') {
      // OpenAPI 2.22 TokenRequest: `externalToken`, a token issued by the identity provider the control plane is configured with.
      body = { grantType: 'external_token_exchange', externalToken: readPlatformToken(credentials.subject, expiries) }
    } else {
      throw new UnsupportedGrant('runai', credentials.grant)
    }
    return { url: endpoint, headers: JSON_HEADERS, body: JSON.stringify(body), expiries }
  },

  readResponse (body: unknown): TokenResponse {
    // The response carries no expiry: the manager reads the JWT's `exp`.
    return { accessToken: new Secret(requireString(body, 'accessToken')), expiresIn: undefined, refreshToken: optionalSecret(body, 'refreshToken') }
  }
}

/** Run:ai's deprecated `POST /v1/k8s/auth/oauth/apptoken` (AppTokenRequest / AppTokenResponse), for old control planes. */
export const runaiAppToken: Dialect = {
  buildRequest (settings: TokenSettings, endpoint: URL) {
    const credentials = settings.credentials
    if (credentials.grant !== 'app_token') throw new UnsupportedGrant('runai-apptoken', credentials.grant)
    const { id, secret } = credentials.client
    const body = { id, name: settings.appName ?? id, secret: readSecret(secret).reveal() }
    return { url: endpoint, headers: JSON_HEADERS, body: JSON.stringify(body) }
  },

  readResponse (body: unknown): TokenResponse {
    return { accessToken: new Secret(requireString(body, 'access_token')), expiresIn: undefined, refreshToken: undefined }
  }
}

/** Run:ai's token API exchanging a login's code (OpenAPI 2.22 TokenRequest `exchange_token`): it has no field for a PKCE verifier. */
export function runaiCodeExchange (code: string, redirectUri: string): Record<string, string> {
  return { grantType: 'exchange_token', code, redirectUri }
}

/** Run:ai's answer to a code exchange, in OAuth's names: its ID token and refresh token (TokenResponse `idToken`, `refreshToken`). */
export function readRunaiLogin (body: Record<string, unknown>): Record<string, unknown> {
  return { id_token: body.idToken, refresh_token: body.refreshToken }
}
