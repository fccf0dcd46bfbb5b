import type { TokenSettings } from '../config.js'
import { readSecret, Secret } from '../secret.js'
import { type Dialect, type Grant, JSON_HEADERS, optionalSecret, optionalSeconds, requireString } from './dialect.js'

/** IBM API Connect platform REST interface, `POST /api/token`. */
export const apiconnect: Dialect = {
  buildRequest (settings: TokenSettings, endpoint: URL) {
    const body: Record<string, string> = settings.grant === 'api_key'
      ? { api_key: readSecret(settings.apiKey!).reveal(), grant_type: 'api_key' }
      : { username: settings.username ?? '', password: readSecret(settings.password!).reveal(), grant_type: 'password' }
    if (settings.realm !== undefined) body.realm = settings.realm
    if (settings.clientId !== undefined) body.client_id = settings.clientId
    if (settings.clientSecret !== undefined) body.client_secret = readSecret(settings.clientSecret).reveal()
    return { url: endpoint, headers: JSON_HEADERS, body: JSON.stringify(body) }
  },

  readResponse (body: unknown): Grant {
    return {
      accessToken: new Secret(requireString(body, 'access_token')),
      expiresIn: optionalSeconds(body, 'expires_in'),
      refreshToken: optionalSecret(body, 'refresh_token')
    }
  }
}
