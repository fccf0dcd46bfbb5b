import type { TokenSettings } from '../config.js'
import { readSecret, Secret } from '../secret.js'
import { type Dialect, type Grant, JSON_HEADERS, optionalSecret, requireString } from './dialect.js'

/** Run:ai control plane `POST /api/v1/token` (OpenAPI 2.22, TokenRequest / TokenResponse). */
export const runai: Dialect = {
  buildRequest (settings: TokenSettings, endpoint: URL, refresh: Secret | undefined) {
    let body: Record<string, string>
    if (refresh !== undefined) {
      body = { grantType: 'refresh_token', refreshToken: refresh.reveal() }
    } else if (settings.grant === 'password') {
      body = { grantType: 'password', username: settings.username ?? '', password: readSecret(settings.password!).reveal() }
    } else if (settings.grant === 'refresh_token') {
      body = { grantType: 'refresh_token', refreshToken: readSecret(settings.refreshToken!).reveal() }
    } else if (settings.grant === 'app_token') {
      body = { grantType: 'app_token', appID: settings.clientId ?? '', appSecret: readSecret(settings.clientSecret!).reveal() }
    } else {
      body = { grantType: 'client_credentials', clientID: settings.clientId ?? '', clientSecret: readSecret(settings.clientSecret!).reveal() }
    }
    return { url: endpoint, headers: JSON_HEADERS, body: JSON.stringify(body) }
  },

  readResponse (body: unknown): Grant {
    // The response carries no expiry: the manager reads the JWT's `exp`.
    return { accessToken: new Secret(requireString(body, 'accessToken')), expiresIn: undefined, refreshToken: optionalSecret(body, 'refreshToken') }
  }
}

/** Run:ai's deprecated `POST /v1/k8s/auth/oauth/apptoken` (AppTokenRequest / AppTokenResponse), for old control planes. */
export const runaiAppToken: Dialect = {
  buildRequest (settings: TokenSettings, endpoint: URL) {
    const body = { id: settings.clientId ?? '', name: settings.appName ?? settings.clientId ?? '', secret: readSecret(settings.clientSecret!).reveal() }
    return { url: endpoint, headers: JSON_HEADERS, body: JSON.stringify(body) }
  },

  readResponse (body: unknown): Grant {
    return { accessToken: new Secret(requireString(body, 'access_token')), expiresIn: undefined, refreshToken: undefined }
  }
}
