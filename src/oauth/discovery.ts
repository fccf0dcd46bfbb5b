import type { Dispatcher } from 'undici'
import { displayUrl } from '../errors.js'
import { asObject, summariseError, TokenResponseError } from '../token/dialect.js'
import { oauthRequest } from './http.js'

/** The endpoints of RFC 8414 / OpenID Connect Discovery metadata that bearer-proxy uses. */
export type EndpointName = 'token_endpoint' | 'authorization_endpoint' | 'device_authorization_endpoint' | 'revocation_endpoint'

/** An issuer's metadata, checked: each endpoint it names is a usable URL, or why it is not. */
export interface AuthorizationServer {
  readonly issuer: URL
  readonly tokenEndpoint: URL
  /** The endpoint named `name`, undefined when the document names none; throws why it cannot be used. */
  readonly endpoint: (name: EndpointName) => URL | undefined
}

/** `<issuer>/.well-known/openid-configuration` (issuers with a path work). */
export function discoveryUrl (issuer: URL): URL {
  const url = new URL(issuer.href)
  url.pathname = issuer.pathname.replace(/\/+$/, '') + '/.well-known/openid-configuration'
  url.search = ''
  return url
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
  const said = typeof document.issuer === 'string' ? document.issuer.replace(/\/+$/, '') : undefined
  if (said !== issuer.href.replace(/\/+$/, '')) {
    throw new TokenResponseError(`discovery document names another issuer than ${displayUrl(issuer)}`)
  }
  return {
    issuer,
    tokenEndpoint: checkProviderUrl(issuer, document.token_endpoint, 'token_endpoint', allowHttp),
    endpoint: (name) => document[name] === undefined ? undefined : checkProviderUrl(issuer, document[name], name, allowHttp)
  }
}

/** A discovery document that could not be had: where, and what was answered. */
export class DiscoveryAnswerError extends Error {
  constructor (readonly url: URL, readonly status: number, readonly summary: string | undefined) {
    super(`discovery document ${displayUrl(url)} answered ${status}${summary === undefined ? '' : ` ${summary}`}`)
    this.name = 'DiscoveryAnswerError'
  }
}

export interface DiscoveryOptions {
  readonly dispatcher: Dispatcher
  readonly timeout: number
  readonly allowHttp: boolean
  readonly scrub: (text: string) => string
}

/**
 * The metadata of the first of `issuers` that has a discovery document (Keycloak's
 * two realm paths: a 404 moves on to the next), checked. Throws a
 * `DiscoveryAnswerError`, a `TokenResponseError`, or the network's error.
 */
export async function discover (issuers: readonly URL[], options: DiscoveryOptions): Promise<AuthorizationServer> {
  const last = issuers[issuers.length - 1]
  for (const issuer of issuers) {
    const url = discoveryUrl(issuer)
    const { status, body } = await oauthRequest(url, { method: 'GET', headers: { accept: 'application/json' }, ...options })
    if (status === 404 && issuer !== last) continue
    if (status !== 200) throw new DiscoveryAnswerError(url, status, summariseError(body, status))
    return processDiscoveryResponse(issuer, body, options.allowHttp)
  }
  throw new Error('no issuer to discover')
}
