import type { TokenSettings } from '../config.js'
import { readSecret, Secret } from '../secret.js'
import { storedRefreshToken } from '../login/store.js'
import { authenticateClient, signedAssertion } from './client-auth.js'
import { asObject, type Dialect, type Grant, optionalSecret, optionalSeconds, requireString, type TokenRequest, TokenResponseError, UnsupportedGrant } from './dialect.js'

/** RFC 7523 §2.1's grant type. */
export const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer'

/** OAuth 2.0 token endpoint, RFC 6749 grants and RFC 7523's jwt-bearer, form-encoded. */
export const oidc: Dialect = {
  async buildRequest (settings: TokenSettings, endpoint: URL, refresh: Secret | undefined): Promise<TokenRequest> {
    const credentials = settings.credentials
    const form = new URLSearchParams()
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
      // RFC 7523 §2.1: the signed assertion is the grant.
      form.set('grant_type', JWT_BEARER)
      form.set('assertion', await signedAssertion(settings, endpoint, credentials.client.id))
    } else {
      throw new UnsupportedGrant('oidc', credentials.grant)
    }
    const headers: Record<string, string> = {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json'
    }
    await authenticateClient(settings, { form, headers, endpoint })
    // A service account's scope travels in its assertion.
    if (settings.scope !== undefined && !settings.serviceAccount) form.set('scope', settings.scope)
    if (settings.audience !== undefined) form.set('audience', settings.audience)
    for (const [key, value] of settings.params) form.append(key, value)
    return { url: endpoint, headers, body: form.toString() }
  },

  readResponse (body: unknown): Grant {
    const type = asObject(body).token_type
    if (type !== undefined && (typeof type !== 'string' || type.toLowerCase() !== 'bearer')) {
      const named = typeof type === 'string' && /^[A-Za-z_-]{1,20}$/.test(type) ? ` ${type}` : ' of another kind'
      throw new TokenResponseError(`response has token_type${named}, not Bearer`)
    }
    return {
      accessToken: new Secret(requireString(body, 'access_token')),
      expiresIn: optionalSeconds(body, 'expires_in'),
      refreshToken: optionalSecret(body, 'refresh_token')
    }
  }
}
