import { randomBytes, X509Certificate } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { TLSSocket } from 'node:tls'
import type { AddressInfo } from 'node:net'
import { exportJWK, generateKeyPair, type JSONWebKeySet, type JWK } from 'jose'
import Provider, { errors } from 'oidc-provider'

/** RFC 8693's grant type. */
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'

/** The audience of every access token the demo identity provider issues. */
export const API_AUDIENCE = 'urn:bearer-proxy:demo-api'

export interface IdpClient {
  readonly clientId: string
  /** Absent for a client that signs with its key (`private_key_jwt`). */
  readonly clientSecret?: string
  readonly authMethod?: 'client_secret_post' | 'client_secret_basic' | 'client_secret_jwt' | 'private_key_jwt' | 'tls_client_auth' | 'self_signed_tls_client_auth' | 'none'
  /** A native application (RFC 8252): its redirect is the loopback `http://127.0.0.1/callback`, on any port. */
  readonly native?: boolean
  /** The subject DN of a `tls_client_auth` client's certificate, e.g. `CN=my-client`. */
  readonly subjectDn?: string
  /** The public keys of a `private_key_jwt` client. */
  readonly jwks?: JSONWebKeySet
}

/** A client assertion as the provider received it: decoded, its signature checked by the provider itself. */
export interface SeenAssertion {
  /** As sent, for tests that prove it never appears anywhere else. */
  readonly assertion: string
  readonly header: Record<string, unknown>
  readonly payload: Record<string, unknown>
  /** The other form fields' names (never their values). */
  readonly fields: string[]
}

export interface IdpOptions {
  readonly clients: readonly IdpClient[]
  /** user name → password, for the password grant. */
  readonly users?: Readonly<Record<string, string>>
  /** Access token lifetime in seconds. */
  readonly accessTokenTtl: number
  /** Issuer path, e.g. `/realms/demo` (issuers with a path). */
  readonly path?: string
  /** Token endpoint path below the issuer (Keycloak: `/protocol/openid-connect/token`). */
  readonly tokenPath?: string
  readonly port?: number
  /**
   * The origin clients reach it at when another server serves it there (a control
   * plane serving its Keycloak at its own origin): its issuer and endpoints are named there.
   */
  readonly origin?: string
  /** People can log in (oidc-provider's development sign-in and consent pages; any user name is an account). */
  readonly interactive?: boolean
  /** Serve https with this certificate, asking clients for theirs (mutual TLS, RFC 8705), trusting `ca` for them. */
  readonly tls?: { readonly key: string, readonly cert: string, readonly ca: string }
  /**
   * RFC 8693 token exchange, registered as a grant: the subject token is checked by
   * `trust` (a Kubernetes service account issuer's keys, say), which names the account
   * the token is issued to, or throws why the subject token is refused.
   */
  readonly tokenExchange?: (subjectToken: string, subjectTokenType: string) => Promise<string>
  /** RFC 9449: a token request with a DPoP proof gets a token bound to its key; `requireNonce`: only with the provider's nonce. */
  readonly dpop?: { readonly requireNonce: boolean }
}

/** How the token endpoint behaves, switchable while running (for fault tests). */
export type IdpMode = 'normal' | 'down' | 'garbage' | 'slow' | 'error'

export interface Idp {
  readonly issuer: string
  /** Where it listens (its issuer's origin, unless another server serves it at its own). */
  readonly listening: string
  readonly tokenUrl: string
  /** The public keys that verify its tokens. */
  readonly jwks: JSONWebKeySet
  /** Token endpoint requests received so far. */
  tokenRequests: number
  /** The client assertions of token requests, in order. */
  readonly assertions: SeenAssertion[]
  mode: IdpMode
  /** How long the token endpoint takes in `slow` mode. */
  slowMs: number
  readonly close: () => Promise<void>
}

/**
 * A real OpenID Connect provider (oidc-provider) on 127.0.0.1 issuing RS256 JWT
 * access tokens: client_credentials, password (registered here, as Keycloak
 * offers it) and refresh_token grants.
 */
export async function startIdp (options: IdpOptions): Promise<Idp> {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true })
  const key: JWK = { ...await exportJWK(privateKey), kid: 'demo', use: 'sig', alg: 'RS256' }
  const publicKey: JWK = { kty: key.kty, n: key.n, e: key.e, kid: 'demo', use: 'sig', alg: 'RS256' }

  const server: Server = options.tls === undefined
    ? createServer()
    : createHttpsServer({ key: options.tls.key, cert: options.tls.cert, ca: options.tls.ca, requestCert: true, rejectUnauthorized: false })
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  const path = options.path ?? ''
  const listening = `${options.tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`
  const issuer = `${options.origin ?? listening}${path}`
  const resourceServer = {
    scope: 'api',
    audience: API_AUDIENCE,
    accessTokenTTL: options.accessTokenTtl,
    accessTokenFormat: 'jwt' as const,
    jwt: { sign: { alg: 'RS256' as const } }
  }
  const users = options.users ?? {}
  const tokenPath = options.tokenPath ?? '/token'

  const provider = new Provider(issuer, {
    clients: options.clients.map((client) => ({
      client_id: client.clientId,
      ...(client.clientSecret === undefined ? {} : { client_secret: client.clientSecret }),
      ...(client.jwks === undefined ? {} : { jwks: client.jwks }),
      ...(client.subjectDn === undefined ? {} : { tls_client_auth_subject_dn: client.subjectDn }),
      grant_types: ['client_credentials', 'password', 'refresh_token', 'authorization_code', ...(options.tokenExchange === undefined ? [] : [TOKEN_EXCHANGE])],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/unused'],
      ...(client.native === true ? { application_type: 'native' as const, redirect_uris: ['http://127.0.0.1/callback'], grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'] } : {}),
      token_endpoint_auth_method: client.authMethod ?? 'client_secret_post'
    })),
    jwks: { keys: [key] },
    clientAuthMethods: ['none', 'client_secret_basic', 'client_secret_jwt', 'client_secret_post', 'private_key_jwt', ...(options.tls === undefined ? [] : ['tls_client_auth' as const, 'self_signed_tls_client_auth' as const])],
    scopes: ['openid', 'offline_access', 'api'],
    // DPoP keys as Keycloak takes them: RSA too, besides EC P-256 and Ed25519.
    enabledJWA: { dPoPSigningAlgValues: ['ES256', 'EdDSA', 'Ed25519', 'RS256', 'PS256'] },
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    features: {
      clientCredentials: { enabled: true },
      // RFC 8705: the certificate the TLS handshake verified against `tls.ca`.
      mTLS: {
        enabled: options.tls !== undefined,
        tlsClientAuth: true,
        selfSignedTlsClientAuth: true,
        getCertificate: (ctx) => {
          const peer = (ctx.socket as TLSSocket).getPeerCertificate?.()
          return peer?.raw === undefined ? undefined : new X509Certificate(peer.raw).toString()
        },
        certificateAuthorized: (ctx) => (ctx.socket as TLSSocket).authorized,
        certificateSubjectMatches: (ctx, property, expected) => {
          const peer = (ctx.socket as TLSSocket).getPeerCertificate?.()
          return property === 'tls_client_auth_subject_dn' && peer?.raw !== undefined && new X509Certificate(peer.raw).subject === expected
        }
      },
      devInteractions: { enabled: options.interactive === true },
      dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => options.dpop?.requireNonce === true },
      revocation: { enabled: options.interactive === true },
      deviceFlow: { enabled: options.interactive === true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => API_AUDIENCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => resourceServer
      }
    },
    ttl: { AccessToken: options.accessTokenTtl, ClientCredentials: options.accessTokenTtl, RefreshToken: 86_400, Grant: 86_400 },
    rotateRefreshToken: true,
    // A login's code brings a refresh token without the consent prompt offline_access would otherwise need.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    routes: { token: tokenPath }
  })
  provider.proxy = false

  provider.registerGrantType('password', async (ctx) => {
    const params = ctx.oidc.params as { username?: string, password?: string }
    const client = ctx.oidc.client!
    if (params.username === undefined || users[params.username] === undefined || users[params.username] !== params.password) {
      throw new errors.InvalidGrant('invalid user name or password')
    }
    const grant = new provider.Grant({ accountId: params.username, clientId: client.clientId })
    grant.addOIDCScope('openid offline_access')
    grant.addResourceScope(API_AUDIENCE, 'api')
    const grantId = await grant.save()
    const accessToken = new provider.AccessToken({ accountId: params.username, client, grantId, gty: 'password', scope: 'api' })
    accessToken.resourceServer = new provider.ResourceServer(API_AUDIENCE, resourceServer)
    const refreshToken = new provider.RefreshToken({
      accountId: params.username, client, grantId, gty: 'password', scope: 'openid offline_access api', resource: API_AUDIENCE
    } as ConstructorParameters<typeof provider.RefreshToken>[0])
    ctx.body = {
      access_token: await accessToken.save(),
      expires_in: accessToken.expiration,
      token_type: 'Bearer',
      refresh_token: await refreshToken.save(),
      scope: 'api'
    }
  }, ['username', 'password', 'scope'])

  const { tokenExchange } = options
  if (tokenExchange !== undefined) {
    provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
      const params = ctx.oidc.params as { subject_token?: string, subject_token_type?: string }
      if (params.subject_token === undefined || params.subject_token_type === undefined) throw new errors.InvalidRequest('subject_token and subject_token_type are required')
      let accountId: string
      try {
        accountId = await tokenExchange(params.subject_token, params.subject_token_type)
      } catch (error) {
        throw new errors.InvalidGrant(`subject_token refused: ${(error as Error).message}`)
      }
      const client = ctx.oidc.client!
      const grant = new provider.Grant({ accountId, clientId: client.clientId })
      grant.addResourceScope(API_AUDIENCE, 'api')
      const accessToken = new provider.AccessToken({ accountId, client, grantId: await grant.save(), gty: 'token-exchange', scope: 'api' })
      accessToken.resourceServer = new provider.ResourceServer(API_AUDIENCE, resourceServer)
      ctx.body = {
        access_token: await accessToken.save(),
        issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
        token_type: 'Bearer',
        expires_in: accessToken.expiration,
        scope: 'api'
      }
    }, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope'], ['audience', 'resource'])
  }

  // Each client assertion, decoded once the provider has judged it.
  const assertions: SeenAssertion[] = []
  provider.use(async (ctx, next) => {
    await next()
    const params = (ctx.oidc as { params?: Record<string, unknown> } | undefined)?.params
    const assertion = params?.client_assertion
    if (typeof assertion !== 'string') return
    const [header, payload] = assertion.split('.').slice(0, 2).map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as Record<string, unknown>)
    assertions.push({ assertion, header: header ?? {}, payload: payload ?? {}, fields: Object.keys(params ?? {}).filter((name) => params?.[name] !== undefined) })
  })

  const callback = provider.callback()
  // Mounted below the issuer's path, as oidc-provider expects when the issuer has one.
  const serve = (req: IncomingMessage, res: ServerResponse): void => {
    if (path !== '' && req.url?.startsWith(path) === true) {
      (req as IncomingMessage & { originalUrl?: string }).originalUrl = req.url
      req.url = req.url.slice(path.length) || '/'
    }
    callback(req, res)
  }
  const idp: Idp = {
    issuer,
    listening,
    tokenUrl: `${issuer}${tokenPath}`,
    jwks: { keys: [publicKey] },
    tokenRequests: 0,
    assertions,
    mode: 'normal',
    slowMs: 2000,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (req.method === 'POST' && req.url?.startsWith(`${path}${tokenPath}`) === true) {
      idp.tokenRequests++
      if (fault(idp.mode, req, res)) return
      if (idp.mode === 'slow') {
        setTimeout(() => serve(req, res), idp.slowMs)
        return
      }
    }
    serve(req, res)
  })
  return idp
}

function fault (mode: IdpMode, req: IncomingMessage, res: ServerResponse): boolean {
  switch (mode) {
    case 'normal':
    case 'slow':
      return false
    case 'down':
      req.socket.destroy()
      return true
    case 'garbage':
      res.writeHead(200, { 'content-type': 'application/json' }).end('<html>not json</html>')
      return true
    case 'error':
      res.writeHead(503, { 'content-type': 'text/html' }).end('<html>maintenance</html>')
      return true
  }
}
