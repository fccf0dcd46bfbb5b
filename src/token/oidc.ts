import type { TokenSettings } from '../config.js'
import { displayUrl } from '../errors.js'
import { readSecret, Secret } from '../secret.js'
import { asObject, type Dialect, type Grant, optionalSecret, optionalSeconds, requireString, type TokenRequest, TokenResponseError, UnsupportedGrant } from './dialect.js'

/** OAuth 2.0 token endpoint, RFC 6749 grants, form-encoded. */
export const oidc: Dialect = {
  buildRequest (settings: TokenSettings, endpoint: URL, refresh: Secret | undefined): TokenRequest {
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
    } else {
      throw new UnsupportedGrant('oidc', credentials.grant)
    }
    const headers: Record<string, string> = {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json'
    }
    const client = credentials.client
    const secret = client?.secret === undefined ? undefined : readSecret(client.secret).reveal()
    if (client !== undefined && settings.clientAuth === 'client_secret_basic' && secret !== undefined) {
      // RFC 6749 §2.3.1: both parts form-encoded before base64.
      const pair = `${formEncode(client.id)}:${formEncode(secret)}`
      headers.authorization = `Basic ${Buffer.from(pair).toString('base64')}`
    } else if (client !== undefined) {
      form.set('client_id', client.id)
      if (secret !== undefined) form.set('client_secret', secret)
    }
    if (settings.scope !== undefined) form.set('scope', settings.scope)
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

function formEncode (value: string): string {
  return new URLSearchParams({ v: value }).toString().slice(2)
}

/** The token endpoint named by an issuer's discovery document (issuers with a path work). */
export function discoveryUrl (issuer: URL): URL {
  const url = new URL(issuer.href)
  url.pathname = issuer.pathname.replace(/\/+$/, '') + '/.well-known/openid-configuration'
  url.search = ''
  return url
}

/** The token endpoint a discovery document names, refused when it would downgrade an https issuer to plain http. */
export function readDiscovery (issuer: URL, body: unknown, allowHttp: boolean): URL {
  const document = asObject(body)
  const said = typeof document.issuer === 'string' ? document.issuer.replace(/\/+$/, '') : undefined
  if (said !== issuer.href.replace(/\/+$/, '')) {
    throw new TokenResponseError(`discovery document names another issuer than ${displayUrl(issuer)}`)
  }
  const endpoint = document.token_endpoint
  let url: URL | undefined
  try {
    url = typeof endpoint === 'string' ? new URL(endpoint) : undefined
  } catch {}
  if (url === undefined || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
    throw new TokenResponseError('discovery document has no usable token_endpoint')
  }
  if (issuer.protocol === 'https:' && url.protocol === 'http:' && !allowHttp) {
    throw new TokenResponseError(`discovery document names a plain http token endpoint (${displayUrl(url)}) for an https issuer: ` +
      'the credentials would travel unencrypted, so none were sent (BEARER_PROXY_ALLOW_HTTP_TOKEN_ENDPOINT=true allows it)')
  }
  return url
}
