import type { Dispatcher } from 'undici'
import { displayUrl } from '../errors.js'
import { asObject, summariseError, TokenResponseError } from './dialect.js'
import { networkReason, oauthRequest } from './http.js'
import { trimSlashes } from '../url.js'

/** The endpoints of RFC 8414 / OpenID Connect Discovery metadata that bearer-proxy uses. */
export type EndpointName = 'token_endpoint' | 'authorization_endpoint' | 'device_authorization_endpoint' | 'revocation_endpoint'

/** An issuer's metadata, checked: each endpoint it names is a usable URL, or why it is not. */
export interface AuthorizationServer {
  readonly issuer: URL
  readonly tokenEndpoint: URL
  /** The endpoint named `name`, undefined when the document names none; throws why it cannot be used. */
  readonly endpoint: (name: EndpointName) => URL | undefined
}

/**
 * Where an issuer's metadata may be: OpenID Connect Discovery's document, appended
 * to the issuer's path, then RFC 8414's, inserted before it (§3.1:
 * `/.well-known/oauth-authorization-server/realms/x`), for a plain OAuth 2.0
 * authorization server that publishes only that.
 */
export function metadataUrls (issuer: URL): URL[] {
  const path = trimSlashes(issuer.pathname)
  return [`${path}/.well-known/openid-configuration`, `/.well-known/oauth-authorization-server${path}`].map((pathname) => {
    const url = new URL(issuer.href)
    url.pathname = pathname
    url.search = ''
    url.hash = ''
    return url
  })
}

const LABELS: Readonly<Record<string, string>> = {
  token_endpoint: 'token endpoint',
  authorization_endpoint: 'authorization endpoint',
  device_authorization_endpoint: 'device authorization endpoint',
  revocation_endpoint: 'revocation endpoint'
}

/**
 * A URL an identity provider names (an endpoint, a verification page), or why it
 * cannot be used: an http(s) URL without credentials in it, and https when the
 * issuer is (credentials, codes and tokens are sent there), unless `allowHttp`.
 * Never `javascript:`, `file:`, `data:` or anything else.
 */
export function checkProviderUrl (issuer: URL, value: unknown, what: string, allowHttp: boolean): URL {
  let url: URL | undefined
  try {
    url = typeof value === 'string' ? new URL(value) : undefined
  } catch {}
  if (url === undefined || (url.protocol !== 'https:' && url.protocol !== 'http:') || url.username !== '' || url.password !== '') {
    throw new TokenResponseError(`discovery document has no usable ${what}`)
  }
  if (issuer.protocol === 'https:' && url.protocol === 'http:' && !allowHttp) {
    throw new TokenResponseError(`discovery document names a plain http ${LABELS[what as EndpointName] ?? what} (${displayUrl(url)}) for an https issuer: ` +
      'the credentials would travel unencrypted, so none were sent (BEARER_PROXY_ALLOW_HTTP_TOKEN_ENDPOINT=true allows it)')
  }
  return url
}

/**
 * A discovery document checked before anything trusts it: its `issuer` is the one
 * asked for (OpenID Connect Discovery §4.3, RFC 8414 §3.3), its `token_endpoint` is
 * usable, and every other endpoint is checked the same way when it is used.
 */
export function processDiscoveryResponse (issuer: URL, body: unknown, allowHttp: boolean): AuthorizationServer {
  const document = asObject(body)
  const said = typeof document.issuer === 'string' ? trimSlashes(document.issuer) : undefined
  if (said !== trimSlashes(issuer.href)) {
    throw new TokenResponseError(`discovery document names another issuer than ${displayUrl(issuer)}`)
  }
  return {
    issuer,
    tokenEndpoint: checkProviderUrl(issuer, document.token_endpoint, 'token_endpoint', allowHttp),
    endpoint: (name) => document[name] === undefined ? undefined : checkProviderUrl(issuer, document[name], name, allowHttp)
  }
}

/** No candidate had a usable discovery document: every URL tried, and what each answered. */
export class DiscoveryError extends Error {
  constructor (readonly tried: ReadonlyArray<{ readonly url: URL, readonly outcome: string }>) {
    super(`no usable discovery document: ${tried.map(({ url, outcome }) => `${displayUrl(url)} ${outcome}`).join('; ')}`)
    this.name = 'DiscoveryError'
  }
}

export interface DiscoveryOptions {
  readonly dispatcher: Dispatcher
  readonly timeout: number
  readonly allowHttp: boolean
  readonly scrub: (text: string) => string
}

/**
 * The metadata of the first of `issuers` (Keycloak's two realm paths, or one issuer)
 * that has a valid discovery document at one of its metadata URLs, checked. Whatever
 * a candidate answers instead (a 401 or 403 from a gateway, a sign-in redirect, a
 * single-page app's HTML, JSON for another issuer or without a token endpoint, no
 * answer in time), the next is tried; when none has one, a `DiscoveryError` names
 * every URL tried and what each answered.
 */
export async function discover (issuers: readonly URL[], options: DiscoveryOptions): Promise<AuthorizationServer> {
  const tried: Array<{ url: URL, outcome: string }> = []
  for (const issuer of issuers) {
    for (const url of metadataUrls(issuer)) {
      let outcome: string
      try {
        const { status, body } = await oauthRequest(url, { method: 'GET', headers: { accept: 'application/json' }, ...options })
        if (status !== 200) {
          const summary = summariseError(body, status)
          outcome = `answered ${status}${status >= 300 && status < 400 ? ' (a redirect, not followed)' : summary === undefined ? '' : ` ${summary}`}`
        } else if (body === undefined) {
          outcome = 'answered 200 with a body that is not JSON'
        } else {
          return processDiscoveryResponse(issuer, body, options.allowHttp)
        }
      } catch (error) {
        outcome = error instanceof TokenResponseError
          ? (error.code === 'unreadable_body' ? `answered ${error.message}` : error.message.replace(/^discovery document /, 'answered a document that '))
          : `is unreachable: ${networkReason(error)}`
      }
      tried.push({ url, outcome })
    }
  }
  throw new DiscoveryError(tried)
}
