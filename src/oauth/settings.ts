import type { SecretSource } from '../secret.js'

/**
 * What an OAuth client of bearer-proxy is configured with: one credential set's
 * flavour, grant, client, endpoint and the values its requests carry. The
 * configuration builds these (`config/rules.ts`); everything in `oauth/` reads them.
 */

export const FLAVOURS = ['oidc', 'runai', 'runai-apptoken', 'apiconnect'] as const
export const GRANTS = ['client_credentials', 'password', 'refresh_token', 'app_token', 'api_key', 'jwt_bearer', 'login', 'token_exchange'] as const
/** How a client proves who it is to an OAuth token endpoint (RFC 6749 §2.3.1, RFC 7523 §2.2, RFC 8705 §2). */
export const CLIENT_AUTHS = ['client_secret_post', 'client_secret_basic', 'client_secret_jwt', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth'] as const

export type Flavour = typeof FLAVOURS[number]
/** The name of a configured grant (`GRANT`). */
export type GrantName = typeof GRANTS[number]
export type ClientAuth = typeof CLIENT_AUTHS[number]

/**
 * How a token request is written: an OAuth 2.0 form (OpenID Connect, Keycloak,
 * Run:ai's `/api/v2/token`), Run:ai's JSON `/api/v1/token`, its older app-token
 * endpoint, or API Connect's JSON.
 */
export type DialectName = 'oauth' | 'runai-v1' | 'runai-apptoken' | 'apiconnect'

/** A token endpoint and how it is spoken to. */
export interface Endpoint { readonly url: URL, readonly dialect: DialectName }

/**
 * Where tokens come from: one endpoint; issuers whose discovery documents name one
 * (the first that exists wins); or endpoints of a product's successive API versions,
 * newest first: the first that does not answer 404 or 405 wins (and is kept).
 */
export type TokenEndpoint =
  | { readonly kind: 'url', readonly endpoint: Endpoint }
  | { readonly kind: 'issuer', readonly issuers: readonly [URL, ...URL[]] }
  | { readonly kind: 'versions', readonly endpoints: readonly [Endpoint, ...Endpoint[]] }

/**
 * A client's private key: a PEM (PKCS#8, or PKCS#1/SEC1) or JWK file, or the
 * `private_key` of a service account's JSON key file; re-read when the file changes.
 */
export interface ClientKey {
  readonly file: string
  readonly format: 'key' | 'service_account'
  /** `CLIENT_KEY_ID`: the `kid` of assertions; without it, the JWK's or the service account's (read with the key). */
  readonly id: string | undefined
}

/** Where a person's login is kept, and what it is kept under (the issuer, and the client), and how `login` listens. */
export interface Login {
  readonly store: string
  readonly issuer: string
  /** Where the provider's discovery document is looked for, in turn (a Keycloak realm has two places). */
  readonly discovery: readonly URL[]
  /** The loopback port of the redirect (0: any free one). */
  readonly port: number
  /** Seconds `login` waits for the browser. */
  readonly timeout: number
}

/**
 * A token the platform writes to a file and rotates (a projected service account
 * token, a federated token): read at every token request, never written, moved or
 * deleted, never logged.
 */
export interface PlatformToken {
  readonly file: string
  /** The setting that names it, for messages (`SUBJECT_TOKEN_FILE`). */
  readonly setting: string
  /** It must be a JWT (a subject token of type access_token may be opaque). */
  readonly jwt: boolean
}

/** RFC 8693 §3: the token types bearer-proxy names by a short name. */
export const TOKEN_TYPES: Readonly<Record<string, string>> = {
  jwt: 'urn:ietf:params:oauth:token-type:jwt',
  id_token: 'urn:ietf:params:oauth:token-type:id_token',
  access_token: 'urn:ietf:params:oauth:token-type:access_token'
}

/** A client as the token endpoint knows it; `secret` is absent for public clients. */
export interface Client { readonly id: string, readonly secret: SecretSource | undefined }

/**
 * Exactly what a grant sends, by grant: a dialect switches on `grant` and finds
 * every value it needs present (the table in `config/settings.ts` requires them).
 */
export type Credentials =
  | { readonly grant: 'app_token', readonly client: { readonly id: string, readonly secret: SecretSource } }
  /**
   * The secret is absent when the client signs an assertion instead (`CLIENT_AUTH=private_key_jwt`), and the
   * client too when a federated assertion names it (`CLIENT_ASSERTION_FILE`, Keycloak's federated client authentication).
   */
  | { readonly grant: 'client_credentials', readonly client: Client | undefined }
  /** RFC 7523 §2.1: an assertion is the grant: signed with the client's key, or someone else's, read from `ASSERTION_FILE`. */
  | { readonly grant: 'jwt_bearer', readonly client: Client | undefined, readonly assertion: PlatformToken | undefined }
  /** RFC 8693 (Run:ai: `external_token_exchange`): the platform's token, from a file, exchanged; the client is optional. */
  | { readonly grant: 'token_exchange', readonly subject: PlatformToken, readonly subjectType: string, readonly client: Client | undefined }
  /** `bearer-proxy login`: the refresh token stored for this issuer and client is the grant. */
  | { readonly grant: 'login', readonly client: Client, readonly login: Login }
  | { readonly grant: 'password', readonly username: string, readonly password: SecretSource, readonly client: Client | undefined }
  | { readonly grant: 'refresh_token', readonly refreshToken: SecretSource, readonly client: Client | undefined }
  | { readonly grant: 'api_key', readonly apiKey: SecretSource, readonly client: Client | undefined }

/** The secrets of a set of credentials, to be kept out of anything an endpoint echoes. */
export function secretsOf (credentials: Credentials): SecretSource[] {
  const all = [credentials.client?.secret]
  if (credentials.grant === 'password') all.push(credentials.password)
  if (credentials.grant === 'refresh_token') all.push(credentials.refreshToken)
  if (credentials.grant === 'api_key') all.push(credentials.apiKey)
  return all.filter((source): source is SecretSource => source !== undefined)
}

/** One credential set's settings: where tokens are asked for, with which credentials, and how. */
export interface TokenSettings {
  readonly flavour: Flavour
  readonly credentials: Credentials
  readonly endpoint: TokenEndpoint
  readonly clientAuth: ClientAuth
  /** The key that signs assertions (`private_key_jwt`, `jwt_bearer`). */
  readonly clientKey: ClientKey | undefined
  /** `CLIENT_ASSERTION_FILE`: the platform's JWT, sent as the client's assertion with every token request. */
  readonly clientAssertion: PlatformToken | undefined
  /** RFC 8693 `requested_token_type`, and RFC 8707 `resource`, when set. */
  readonly requestedTokenType: string | undefined
  readonly resource: string | undefined
  /** RFC 9449: token requests carry a DPoP proof (`on`), and a token the server did not bind is refused (`required`). */
  readonly dpop: 'off' | 'on' | 'required'
  /** `DPOP_KEY_FILE`: the DPoP key to use; else one made at start, kept in memory. */
  readonly dpopKeyFile: string | undefined
  /** The `aud` of assertions: the token endpoint, or the issuer. */
  readonly assertionAudience: 'token_endpoint' | 'issuer'
  /** A service account's JSON key file: its scope goes into the assertion, as Google reads it. */
  readonly serviceAccount: boolean
  /** RFC 8705: the certificate (PEM, with its chain) and its key, presented to the token endpoint; re-read when they change. */
  readonly clientCert: { readonly cert: string, readonly key: string } | undefined
  /** The certificate is presented to the set's upstreams too. */
  readonly upstreamClientCert: boolean
  readonly realm: string | undefined
  readonly scope: string | undefined
  readonly audience: string | undefined
  readonly params: ReadonlyArray<readonly [string, string]>
  readonly appName: string | undefined
  /** Seconds before expiry at which a token counts as expired (capped at 10% of its lifetime). */
  readonly refreshSkew: number
  /** Seconds to wait for the token endpoint. */
  readonly timeout: number
  /** An https issuer may name a plain http token endpoint (credentials then travel unencrypted). */
  readonly allowHttpTokenEndpoint: boolean
}

/** The files a set's settings read at each request: its secret files and its keys (the signing key, the client certificate and its key), or only the keys. */
export function filesOf (settings: TokenSettings, which: 'all' | 'keys' = 'all'): string[] {
  const files: string[] = []
  if (which === 'all') for (const source of secretsOf(settings.credentials)) if (source.kind === 'file') files.push(source.path)
  for (const file of [settings.clientKey?.file, settings.clientCert?.cert, settings.clientCert?.key, settings.dpopKeyFile]) if (file !== undefined) files.push(file)
  return files
}

/** The platform's tokens a set's requests carry: read at each request, kept out of anything an endpoint echoes, never a reason to reload. */
export function platformTokensOf (settings: TokenSettings): PlatformToken[] {
  const { credentials } = settings
  const tokens = [settings.clientAssertion, credentials.grant === 'token_exchange' ? credentials.subject : undefined, credentials.grant === 'jwt_bearer' ? credentials.assertion : undefined]
  return tokens.filter((token): token is PlatformToken => token !== undefined)
}
