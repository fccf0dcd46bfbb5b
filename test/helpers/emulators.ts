import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { decodeJwt, exportJWK, generateKeyPair, type JSONWebKeySet, jwtVerify, createLocalJWKSet, SignJWT } from 'jose'
import { request } from 'undici'
import type { Idp } from '../../demo/idp.js'
import { startIdentity, type Teardown } from './stack.js'

export interface Emulator {
  readonly url: string
  /** Token requests as received: path, content type and body (JSON, or a form's fields). */
  readonly calls: Array<{ path: string, contentType: string | undefined, body: Record<string, unknown> }>
  /** Requests for token endpoints this server does not have (answered 404 or 405). */
  readonly absent: string[]
  /** Every token and refresh token it issued. */
  readonly issued: string[]
  /** API requests that reached it with a valid token, by path. */
  readonly served: string[]
  /** Lifetime of the tokens it issues, seconds. */
  ttl: number
  /** Refuse refresh tokens from now on (as after a session ends). */
  refuseRefresh: boolean
  /** What `GET /api/v1/clusters` lists (Run:ai), or a status it answers instead. */
  clusters: unknown[] | number
  /** `GET /api/v1/clusters` requests served so far. */
  clusterReads: number
  readonly jwks: JSONWebKeySet
}

type Answer = { status: number, body: unknown }
type Handler = (body: Record<string, unknown>, emulator: Emulator) => Answer | Promise<Answer>

/** A token endpoint this generation of the product does not have. */
const ABSENT = Symbol('absent')

/**
 * A control plane on 127.0.0.1: token endpoints given by `tokenRoutes`, paths under
 * `realm`'s issuer path passed to that identity provider (as a control plane serves
 * its Keycloak), every other path an API that checks its own tokens.
 */
async function startEmulator (t: Teardown, issuer: string, tokenRoutes: Record<string, Handler | { [ABSENT]: number }>, realm?: Realm): Promise<Emulator & { sign: (sub: string, extra?: Record<string, unknown>) => Promise<string> }> {
  const { privateKey, publicKey } = await generateKeyPair('RS256')
  const jwks = { keys: [{ ...await exportJWK(publicKey), alg: 'RS256' }] }
  const keys = createLocalJWKSet(jwks)
  const emulator = {
    url: '',
    calls: [] as Emulator['calls'],
    absent: [] as string[],
    served: [] as string[],
    issued: [] as string[],
    ttl: 60,
    refuseRefresh: false,
    clusters: [] as unknown[] | number,
    clusterReads: 0,
    jwks,
    sign: async (sub: string, extra: Record<string, unknown> = {}) => {
      const token = await new SignJWT(extra).setProtectedHeader({ alg: 'RS256' })
        .setSubject(sub).setIssuer(issuer).setIssuedAt().setExpirationTime(Math.floor(Date.now() / 1000) + emulator.ttl).sign(privateKey)
      emulator.issued.push(token)
      return token
    }
  }
  const send = (res: ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
  }
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let raw = ''
    req.setEncoding('utf8').on('data', (chunk: string) => { raw += chunk }).on('end', () => {
      const path = (req.url ?? '').split('?')[0] as string
      if (realm !== undefined && path.startsWith(`${realm.path}/`)) {
        const { host: _host, ...headers } = req.headers
        const forwarded = httpRequest(new URL(req.url ?? '/', realm.listening), { method: req.method, headers }, (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers)
          answer.pipe(res)
        })
        forwarded.on('error', () => send(res, 502, { code: 502, message: 'realm unreachable' }))
        forwarded.end(raw)
        return
      }
      const route = req.method === 'POST' ? tokenRoutes[path] : undefined
      if (route !== undefined && typeof route !== 'function') {
        emulator.absent.push(path)
        send(res, route[ABSENT], { code: route[ABSENT], message: route[ABSENT] === 404 ? 'Not Found' : 'Method Not Allowed' })
        return
      }
      if (route !== undefined) {
        let body: Record<string, unknown>
        try {
          body = req.headers['content-type'] === 'application/x-www-form-urlencoded'
            ? Object.fromEntries(new URLSearchParams(raw))
            : JSON.parse(raw) as Record<string, unknown>
        } catch {
          send(res, 400, { code: 400, message: 'invalid JSON' })
          return
        }
        emulator.calls.push({ path, contentType: req.headers['content-type'], body })
        Promise.resolve(route(body, emulator))
          .then(async (answer) => { send(res, answer.status, await answer.body) }, () => send(res, 500, {}))
        return
      }
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1]
      jwtVerify(token ?? '', keys, { issuer }).then(() => {
        if (path === '/api/v1/clusters' && req.method === 'GET') {
          emulator.clusterReads++
          const { clusters } = emulator
          if (typeof clusters === 'number') send(res, clusters, { code: clusters, message: 'unavailable' })
          else send(res, 200, clusters)
          return
        }
        emulator.served.push(path)
        // A redirect to the same server, absolute, as APIs behind a gateway send them.
        if (path.endsWith('/redirect')) {
          res.writeHead(302, { location: `${emulator.url}${path.replace(/redirect$/, 'elsewhere')}` }).end()
          return
        }
        send(res, 200, { path })
      }, () => send(res, 401, { code: 401, message: 'Unauthorized' }))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  emulator.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return emulator
}

export const RUNAI = {
  client: { id: 'runai-app', secret: 'runai-App-Secret-31' },
  user: { username: 'researcher@example.com', password: 'runai-User-Pass-47' },
  app: { id: 'legacy-app', name: 'legacy-name', secret: 'legacy-App-Secret-59' }
}

export interface RunaiOptions {
  /**
   * `v2` (Run:ai 2.2x/3.0): `POST /api/v2/token`, OAuth 2.0 form → `{access_token, token_type, expires_in}`,
   * beside the deprecated v1. `v1` (older control planes): no `/api/v2/token` (`absentStatus`, 404 by default).
   */
  readonly generation?: 'v2' | 'v1'
  readonly absentStatus?: 404 | 405
  /** The `expires_in` of v2 answers (the JWT's own `exp` follows `ttl`). */
  readonly expiresIn?: number
  /**
   * The sign-in realm (an oidc-provider at `/auth/realms/<name>`), served at the same
   * path here: `/api/v1/token` then exchanges its codes (`exchange_token`) and renews
   * its refresh tokens with `client`, the confidential client only the control plane knows.
   */
  readonly realm?: Realm
  /**
   * `external_token_exchange` (2.22 TokenRequest `externalToken`; v2's form `external_token`): a token issued by the
   * identity provider the control plane is configured with, checked by this, which names its subject or throws.
   */
  readonly external?: (token: string) => Promise<string>
}

/** A control plane's sign-in realm: where it is served, where the identity provider behind it listens, its token URL and the client only the control plane knows. */
interface Realm { readonly path: string, listening: string, tokenUrl: string, readonly client: { readonly id: string, readonly secret: string } }

/**
 * Run:ai control plane, as its documentation describes it: `POST /api/v2/token`
 * (form-encoded `grant_type` client_credentials with `client_id`/`client_secret`,
 * or password with `username`/`password` → `{access_token, token_type: "Bearer",
 * expires_in}`), the deprecated `POST /api/v1/token` (2.22 OpenAPI: TokenRequest →
 * TokenResponse), the older `POST /v1/k8s/auth/oauth/apptoken`, errors `{code, message}`.
 */
export async function startRunai (t: Teardown, options: RunaiOptions = {}): Promise<Emulator> {
  const refreshTokens = new Set<string>()
  let counter = 0
  const refused = { status: 401, body: { code: 401, message: 'invalid credentials' } }
  const emulator = await startEmulator(t, 'runai', {
    '/api/v2/token': options.generation === 'v1' ? { [ABSENT]: options.absentStatus ?? 404 } : async (body) => {
      let sub: string | undefined
      if (body.grant_type === 'external_token_exchange' && options.external !== undefined) sub = await options.external(String(body.external_token)).catch(() => undefined)
      if (body.grant_type === 'client_credentials' && body.client_id === RUNAI.client.id && body.client_secret === RUNAI.client.secret) sub = RUNAI.client.id
      if (body.grant_type === 'password' && body.username === RUNAI.user.username && body.password === RUNAI.user.password) sub = RUNAI.user.username
      if (body.grant_type === undefined) return { status: 400, body: { code: 400, message: 'grant_type is required' } }
      if (sub === undefined) return refused
      return { status: 200, body: (async () => ({ access_token: await emulator.sign(sub as string), token_type: 'Bearer', expires_in: options.expiresIn ?? 3600 }))() }
    },
    '/api/v1/token': async (body, self) => {
      const { realm } = options
      // A person's sign-in: the code exchanged, and its refresh token renewed, at the realm, as the control plane does.
      if (realm !== undefined && (body.grantType === 'exchange_token' || (body.grantType === 'refresh_token' && !refreshTokens.has(String(body.refreshToken))))) {
        const form: Record<string, string> = body.grantType === 'exchange_token'
          ? { grant_type: 'authorization_code', code: String(body.code), redirect_uri: String(body.redirectUri) }
          : { grant_type: 'refresh_token', refresh_token: String(body.refreshToken) }
        const answer = await request(realm.tokenUrl, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ ...form, client_id: realm.client.id, client_secret: realm.client.secret }).toString()
        })
        const tokens = await answer.body.json() as Record<string, string>
        if (answer.statusCode !== 200 || self.refuseRefresh) return { status: 401, body: { code: 401, message: `the identity service refused: ${tokens.error ?? 'refused'}` } }
        self.issued.push(tokens.refresh_token as string)
        const { sub } = decodeJwt(tokens.id_token as string)
        return { status: 200, body: { accessToken: await emulator.sign(sub as string), idToken: tokens.id_token, refreshToken: tokens.refresh_token } }
      }
      let sub: string | undefined
      if (body.grantType === 'external_token_exchange' && options.external !== undefined) sub = await options.external(String(body.externalToken)).catch(() => undefined)
      if (body.grantType === 'client_credentials' && body.clientID === RUNAI.client.id && body.clientSecret === RUNAI.client.secret) sub = RUNAI.client.id
      if (body.grantType === 'password' && body.username === RUNAI.user.username && body.password === RUNAI.user.password) sub = RUNAI.user.username
      if (body.grantType === 'app_token' && body.appID === RUNAI.client.id && body.appSecret === RUNAI.client.secret) sub = RUNAI.client.id
      if (body.grantType === 'refresh_token' && typeof body.refreshToken === 'string' && refreshTokens.has(body.refreshToken) && !self.refuseRefresh) {
        refreshTokens.delete(body.refreshToken)
        sub = 'refreshed'
      }
      if (body.grantType === undefined) return { status: 400, body: { code: 400, message: 'grantType is required' } }
      if (sub === undefined) return refused
      const refreshToken = `runai-refresh-${++counter}-Zq`
      refreshTokens.add(refreshToken)
      self.issued.push(refreshToken)
      return { status: 200, body: (async () => ({ accessToken: await emulator.sign(sub as string), idToken: await emulator.sign(sub as string), refreshToken }))() }
    },
    '/v1/k8s/auth/oauth/apptoken': (body) => {
      if (body.id !== RUNAI.app.id || body.secret !== RUNAI.app.secret || typeof body.name !== 'string') return refused
      return { status: 200, body: (async () => ({ access_token: await emulator.sign(`${body.name}`), id_token: await emulator.sign('id') }))() }
    }
  }, options.realm)
  return emulator
}

/**
 * A Run:ai control plane serving its sign-in realm (an oidc-provider) at its own
 * origin, as a real one serves its Keycloak: the realm's issuer and endpoints are
 * the control plane's, and `/api/v1/token` exchanges and renews its logins with
 * `client`, the confidential client only the control plane knows.
 */
export async function startRunaiWithRealm (t: Teardown, name: string, client: { readonly id: string, readonly secret: string }): Promise<{ runai: Emulator, idp: Idp }> {
  const realm: Realm = { path: `/auth/realms/${name}`, listening: '', tokenUrl: '', client }
  const runai = await startRunai(t, { realm })
  const idp = await startIdentity(t, { accessTokenTtl: 600, interactive: true, path: realm.path, origin: runai.url, clients: [{ clientId: client.id, clientSecret: client.secret, authMethod: 'client_secret_post', native: true }] })
  realm.listening = idp.listening
  realm.tokenUrl = idp.tokenUrl
  return { runai, idp }
}

/** The settings of a proxy in front of a Run:ai emulator, with its access key. */
export function runaiEnv (runai: Emulator, extra: Record<string, string> = {}): Record<string, string> {
  return {
    BEARER_PROXY_AUTH: 'runai',
    BEARER_PROXY_UPSTREAM: runai.url,
    BEARER_PROXY_CLIENT_ID: RUNAI.client.id,
    BEARER_PROXY_CLIENT_SECRET: RUNAI.client.secret,
    BEARER_PROXY_PORT: '0',
    BEARER_PROXY_LOG_LEVEL: 'trace',
    ...extra
  }
}

export const APIC = {
  user: { username: 'apiuser', password: 'apic-User-Pass-83' },
  realm: 'provider/default-idp-2',
  client: { id: 'caa87d9a-8cd7-4686-8b6e-ee2cdc5ee267', secret: '3ecff363-7eb3-44be-9e07-6d4386c48b0b' },
  apiKey: 'apic-Api-Key-Value-61'
}

/** IBM API Connect platform: `POST /api/token` → `{access_token, token_type: "Bearer", expires_in}`. */
export async function startApiConnect (t: Teardown, options: { expiresIn?: number | undefined } = {}): Promise<Emulator> {
  const emulator = await startEmulator(t, 'IBM API Connect', {
    '/api/token': (body) => {
      const client = body.client_id === APIC.client.id && body.client_secret === APIC.client.secret
      const byPassword = body.grant_type === 'password' && body.username === APIC.user.username && body.password === APIC.user.password && body.realm === APIC.realm
      const byKey = body.grant_type === 'api_key' && body.api_key === APIC.apiKey
      if (!client || !(byPassword || byKey)) return { status: 401, body: { status: 401, message: ['Invalid username or password for realm'] } }
      return {
        status: 200,
        body: (async () => ({
          access_token: await emulator.sign(byPassword ? APIC.user.username : 'api-key-user', { realm: body.realm }),
          token_type: 'Bearer',
          ...(options.expiresIn === undefined ? {} : { expires_in: options.expiresIn })
        }))()
      }
    }
  })
  return emulator
}

export interface GoogleEmulator {
  readonly url: string
  /** The service account's JSON key file, as the console downloads it. */
  readonly keyFile: string
  readonly clientEmail: string
  /** Assertions received, decoded after their signature was checked (or not). */
  readonly assertions: Array<{ header: Record<string, unknown>, payload: Record<string, unknown>, fields: string[], accepted: boolean }>
  /** API requests that carried a token this emulator issued. */
  readonly served: string[]
}

/**
 * Google's OAuth 2.0 token endpoint for service accounts, as "Using OAuth 2.0 for
 * Server to Server Applications" describes it: `POST token_uri`, form-encoded
 * `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`, the JWT
 * signed RS256 with the account's key (`kid` its `private_key_id`), claims `iss`
 * (the account's email), `scope`, `aud` (`token_uri`), `iat`, `exp` (at most an
 * hour); answers `{access_token, expires_in: 3599, token_type: "Bearer"}` or 400
 * `{error: "invalid_grant", error_description}`. Anything else is an API that
 * accepts only the tokens it issued.
 */
export async function startGoogle (t: Teardown): Promise<GoogleEmulator> {
  const account = await generateKeyPair('RS256', { extractable: true })
  const { exportPKCS8 } = await import('jose')
  const issuing = await generateKeyPair('RS256')
  const keyId = 'f3a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3'
  const clientEmail = 'bearer-proxy@project-4711.iam.gserviceaccount.com'
  const emulator: GoogleEmulator & { url: string, keyFile: string } = { url: '', keyFile: '', clientEmail, assertions: [], served: [] }
  const send = (res: ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' }).end(JSON.stringify(body))
  }
  const server = createServer((req, res) => {
    let raw = ''
    req.setEncoding('utf8').on('data', (chunk: string) => { raw += chunk }).on('end', () => {
      const path = (req.url ?? '').split('?')[0] as string
      if (req.method === 'POST' && path === '/token') {
        const form = new URLSearchParams(raw)
        if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
          send(res, 400, { error: 'unsupported_grant_type', error_description: 'Invalid grant_type: ' })
          return
        }
        const assertion = form.get('assertion') ?? ''
        const header = JSON.parse(Buffer.from(assertion.split('.')[0] ?? '', 'base64url').toString('utf8') || '{}') as Record<string, unknown>
        jwtVerify(assertion, account.publicKey, { algorithms: ['RS256'], issuer: clientEmail, audience: `${emulator.url}/token`, maxTokenAge: 3600 }).then(async ({ payload }) => {
          const seen = { header, payload: payload as Record<string, unknown>, fields: [...form.keys()], accepted: false }
          emulator.assertions.push(seen)
          if (header.kid !== keyId) return send(res, 400, { error: 'invalid_grant', error_description: 'Invalid JWT Signature.' })
          if (typeof payload.scope !== 'string' || payload.scope === '') return send(res, 400, { error: 'invalid_scope', error_description: 'Invalid OAuth scope or ID token audience provided.' })
          if (Number(payload.exp) - Number(payload.iat) > 3600) return send(res, 400, { error: 'invalid_grant', error_description: 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.' })
          seen.accepted = true
          const now = Math.floor(Date.now() / 1000)
          const token = await new SignJWT({ scope: payload.scope }).setProtectedHeader({ alg: 'RS256' }).setSubject(clientEmail).setIssuedAt(now).setExpirationTime(now + 3599).sign(issuing.privateKey)
          send(res, 200, { access_token: token, expires_in: 3599, token_type: 'Bearer' })
        }, () => {
          emulator.assertions.push({ header, payload: {}, fields: [...form.keys()], accepted: false })
          send(res, 400, { error: 'invalid_grant', error_description: 'Invalid JWT Signature.' })
        })
        return
      }
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? ''
      jwtVerify(token, issuing.publicKey).then(() => {
        emulator.served.push(path)
        send(res, 200, { path })
      }, () => send(res, 401, { error: { code: 401, message: 'Request had invalid authentication credentials.', status: 'UNAUTHENTICATED' } }))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  emulator.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const { mkdtempSync, writeFileSync } = await import('node:fs')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  emulator.keyFile = join(mkdtempSync(join(tmpdir(), 'bearer-proxy-google-')), 'service-account.json')
  writeFileSync(emulator.keyFile, JSON.stringify({
    type: 'service_account',
    project_id: 'project-4711',
    private_key_id: keyId,
    private_key: await exportPKCS8(account.privateKey),
    client_email: clientEmail,
    client_id: '104711000000000000001',
    auth_uri: 'https://accounts.google.com/o/oauth2/auth',
    token_uri: `${emulator.url}/token`,
    auth_provider_x509_cert_url: 'https://www.googleapis.com/oauth2/v1/certs',
    universe_domain: 'googleapis.com'
  }, null, 2), { mode: 0o600 })
  return emulator
}
