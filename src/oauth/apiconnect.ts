import type { TokenSettings } from './settings.js'
import { readSecret, Secret } from '../secret.js'
import { type Dialect, type TokenResponse, JSON_HEADERS, optionalSecret, optionalSeconds, requireString, UnsupportedGrant } from './dialect.js'

/** IBM API Connect platform REST interface, `POST /api/token`. */
export const apiconnect: Dialect = {
  buildRequest (settings: TokenSettings, endpoint: URL) {
    const credentials = settings.credentials
    let body: Record<string, string>
    if (credentials.grant === 'api_key') body = { api_key: readSecret(credentials.apiKey).reveal(), grant_type: 'api_key' }
    else if (credentials.grant === 'password') body = { username: credentials.username, password: readSecret(credentials.password).reveal(), grant_type: 'password' }
    else throw new UnsupportedGrant('apiconnect', credentials.grant)
    if (settings.realm !== undefined) body.realm = settings.realm
    const client = credentials.client
    if (client !== undefined) body.client_id = client.id
    if (client?.secret !== undefined) body.client_secret = readSecret(client.secret).reveal()
    return { url: endpoint, headers: JSON_HEADERS, body: JSON.stringify(body) }
  },

  readResponse (body: unknown): TokenResponse {
    return {
      accessToken: new Secret(requireString(body, 'access_token')),
      expiresIn: optionalSeconds(body, 'expires_in'),
      refreshToken: optionalSecret(body, 'refresh_token')
    }
  }
}
