import { PREFIX } from '../prefix.js'
import { joinPath } from '../url.js'
import type { DialectName, Endpoint, Flavour, GrantName, TokenEndpoint } from './settings.js'

/**
 * Where a credential set's tokens come from, worked out once from its settings: a
 * token URL as given, an issuer to discover (a Keycloak realm has two places), or a
 * path on the upstream each product serves its token API at.
 */

/** The token endpoint path each non-OIDC flavour has on `UPSTREAM` (Run:ai's first choice is `/api/v2/token`). */
const RUNAI_V2_PATH = '/api/v2/token'
const DERIVED_PATHS: Readonly<Record<Exclude<Flavour, 'oidc'>, string>> = {
  runai: '/api/v1/token',
  'runai-apptoken': '/v1/k8s/auth/oauth/apptoken',
  apiconnect: '/api/token'
}

/** The dialect of each flavour's token endpoint; Run:ai's depends on the API version (`runaiDialect`). */
const DIALECT_OF: Readonly<Record<Exclude<Flavour, 'runai'>, DialectName>> = { oidc: 'oauth', 'runai-apptoken': 'runai-apptoken', apiconnect: 'apiconnect' }

/** What the token endpoint is derived from: the settings as given. */
export interface EndpointSettings {
  readonly flavour: Flavour
  readonly grant: GrantName
  readonly tokenUrl: URL | undefined
  readonly issuer: URL | undefined
  readonly upstream: URL | undefined
  readonly realm: string | undefined
  /** `RUNAI_TOKEN_API`: v2 or v1, when pinned. */
  readonly runaiApi: string | undefined
}

/**
 * The issuers of a Keycloak realm: Keycloak 17+ serves realms at `/realms/<realm>`,
 * older Keycloak (and the one Run:ai bundles, whose own sign-in is asked first) at
 * `/auth/realms/<realm>`.
 */
export function realmIssuers (base: URL, realm: string, bundled = false): [URL, URL] {
  const name = encodeURIComponent(realm)
  const [current, legacy] = [joinPath(base, `/realms/${name}`), joinPath(base, `/auth/realms/${name}`)]
  return bundled ? [legacy, current] : [current, legacy]
}

/** Run:ai `/api/v2/token` is an OAuth 2.0 form; `/api/v1/token` (deprecated, the only one on older control planes) is JSON. */
function runaiDialect (api: string | undefined, url: URL | undefined): DialectName {
  const v2 = api === undefined ? /\/v2\/token\/?$/.test(url?.pathname ?? '') : api === 'v2'
  return v2 ? 'oauth' : 'runai-v1'
}

/** The token endpoint of a credential set, or the problem that leaves it unknown, in the user's words. */
export function tokenEndpoint (settings: EndpointSettings): TokenEndpoint | string {
  const { flavour, grant, tokenUrl, issuer, upstream, realm, runaiApi } = settings
  // app_token, and the exchange of a login's code, only exist on /api/v1/token.
  const api = flavour === 'runai' && (grant === 'app_token' || grant === 'login') ? 'v1' : runaiApi
  if (tokenUrl !== undefined) {
    return { kind: 'url', endpoint: { url: tokenUrl, dialect: flavour === 'runai' ? runaiDialect(api, tokenUrl) : DIALECT_OF[flavour] } }
  }
  if (flavour === 'oidc') {
    const base = issuer ?? upstream
    if (realm !== undefined && base !== undefined) return { kind: 'issuer', issuers: realmIssuers(base, realm) }
    if (issuer !== undefined) return { kind: 'issuer', issuers: [issuer] }
    return `${PREFIX}TOKEN_URL: required for AUTH=oidc, or ${PREFIX}ISSUER (discovery), or ${PREFIX}REALM with ${PREFIX}UPSTREAM (Keycloak)`
  }
  const path = DERIVED_PATHS[flavour]
  if (upstream === undefined) return `${PREFIX}TOKEN_URL: required for AUTH=${flavour} when ${PREFIX}UPSTREAM is not set (it is derived as <UPSTREAM>${path})`
  if (flavour !== 'runai') return { kind: 'url', endpoint: { url: joinPath(upstream, path), dialect: DIALECT_OF[flavour] } }
  const v2: Endpoint = { url: joinPath(upstream, RUNAI_V2_PATH), dialect: 'oauth' }
  const v1: Endpoint = { url: joinPath(upstream, path), dialect: 'runai-v1' }
  if (api === undefined) return { kind: 'versions', endpoints: [v2, v1] }
  return { kind: 'url', endpoint: api === 'v2' ? v2 : v1 }
}

/**
 * Where a login finds its provider, the first place naming the stored login: the
 * issuer (oidc; a Keycloak realm has two places), or the realm of a Run:ai control
 * plane's own sign-in. `endpoint`, once known, is the oidc set's own.
 */
export function loginIssuers (settings: Omit<EndpointSettings, 'grant' | 'runaiApi'>, endpoint: TokenEndpoint | undefined): readonly URL[] | undefined {
  const { flavour, realm, upstream, issuer, tokenUrl } = settings
  if (flavour === 'runai') return realm === undefined || upstream === undefined ? undefined : realmIssuers(upstream, realm, true)
  if (flavour !== 'oidc') return undefined
  if (endpoint !== undefined) return endpoint.kind === 'issuer' ? endpoint.issuers : undefined
  const base = issuer ?? upstream
  if (realm !== undefined && base !== undefined) return realmIssuers(base, realm)
  return issuer === undefined || tokenUrl !== undefined ? undefined : [issuer]
}
