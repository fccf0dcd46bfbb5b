import { createHash, randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { decodeJwt } from 'jose'
import { type Dispatcher, request } from 'undici'
import type { Client, Config, Login } from '../config.js'
import { displayUrl } from '../errors.js'
import { Secret } from '../secret.js'
import { authenticateClient } from '../token/client-auth.js'
import { asObject, summariseError } from '../token/dialect.js'
import { discoveryUrl } from '../token/oidc.js'
import { readLogin, removeLogin, saveLogin } from './store.js'

/**
 * `bearer-proxy login`: a person's own login, by the authorization code flow with
 * PKCE (RFC 7636, S256) and a loopback redirect (RFC 8252 §7.3), stored as a refresh
 * token for `serve`, `check` and `token` to use (`GRANT=login`).
 *
 * With AUTH=runai the person signs in at the control plane's own realm and the code
 * is exchanged by Run:ai's token API (`grantType: exchange_token`, `code`,
 * `redirectUri`), which renews the login after. That request has no field for a PKCE
 * verifier, so none is sent: `state` and `nonce` still tie the answer to this login.
 */

/** Why a login did not complete, in the user's words; never a code, verifier or token. */
export class LoginError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'LoginError'
  }
}

/** What an issuer's discovery document says a login needs. */
export interface ProviderMetadata {
  readonly issuer: URL
  readonly authorizationEndpoint: URL
  readonly tokenEndpoint: URL
  /** RFC 8628, when the provider has it. */
  readonly deviceEndpoint: URL | undefined
  /** RFC 7009, when the provider has it. */
  readonly revocationEndpoint: URL | undefined
}

const random = (): string => randomBytes(32).toString('base64url')

/**
 * What a login is made of: the settings, where it is kept, the client, the issuers to
 * discover, and Run:ai's token API when it exchanges the code (AUTH=runai).
 */
function loginOf (config: Config): { settings: Config['token'], login: Login, client: Client, issuers: readonly URL[], runaiApi: URL | undefined } {
  const { token: settings } = config
  const { credentials, endpoint } = settings
  if (credentials.grant !== 'login') throw new LoginError('a login needs BEARER_PROXY_ISSUER (or REALM with UPSTREAM) and CLIENT_ID')
  const runaiApi = settings.flavour === 'runai' && endpoint.kind === 'url' ? endpoint.endpoint.url : undefined
  return { settings, login: credentials.login, client: credentials.client, issuers: credentials.login.discovery, runaiApi }
}

/** A form POST to one of the provider's endpoints, with the client's authentication, and its JSON answer. */
async function postForm (settings: Config['token'], url: URL, form: URLSearchParams, dispatcher: Dispatcher): Promise<{ status: number, body: Record<string, unknown> }> {
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' }
  await authenticateClient(settings, { form, headers, endpoint: url })
  const answer = await request(url, { method: 'POST', headers, body: form.toString(), dispatcher, headersTimeout: settings.timeout * 1000 })
  return { status: answer.statusCode, body: asObject(await answer.body.json().catch(() => ({}))) }
}

/** `<what> answered <status> <error (description)>`: an answer in the words of the proxy's other errors. */
function answered (what: string, { status, body }: { status: number, body: unknown }): string {
  const summary = summariseError(body, status)
  return `${what} answered ${status}${summary === undefined ? '' : ` ${summary}`}`
}

/** The issuer's discovery document: the first of the configured issuers that has one (Keycloak's two realm paths). */
export async function discover (issuers: readonly URL[], dispatcher: Dispatcher, timeout: number): Promise<ProviderMetadata> {
  for (const issuer of issuers) {
    const answer = await request(discoveryUrl(issuer), { dispatcher, headersTimeout: timeout * 1000, bodyTimeout: timeout * 1000 })
    if (answer.statusCode === 404) {
      await answer.body.dump()
      continue
    }
    const body = asObject(await answer.body.json().catch(() => ({})))
    const url = (name: string): URL => {
      try {
        return new URL(String(body[name]))
      } catch {
        throw new LoginError(`the discovery document of ${displayUrl(issuer)} has no usable ${name}`)
      }
    }
    const optional = (name: string): URL | undefined => body[name] === undefined ? undefined : url(name)
    return {
      issuer,
      authorizationEndpoint: url('authorization_endpoint'),
      tokenEndpoint: url('token_endpoint'),
      deviceEndpoint: optional('device_authorization_endpoint'),
      revocationEndpoint: optional('revocation_endpoint')
    }
  }
  throw new LoginError(`no discovery document at ${issuers.map((issuer) => displayUrl(issuer)).join(' or ')}`)
}

export interface LoginIo {
  /** Where the URL to open and the progress are written (stderr). */
  readonly say: (line: string) => void
  /** Opens the default browser, where one can be opened. */
  readonly open: (url: string) => void
}

/**
 * The authorization code flow: a loopback listener on 127.0.0.1 (the configured port,
 * or any), the URL to open, one callback (its `state` checked) or the time limit,
 * then the code exchanged with its verifier, the ID token's `nonce` checked, and the
 * refresh token stored. Returns who logged in, as the ID token says.
 */
export async function loginWithBrowser (config: Config, dispatcher: Dispatcher, io: LoginIo): Promise<{ subject: string | undefined }> {
  const { settings, login, client, issuers, runaiApi } = loginOf(config)
  const provider = await discover(issuers, dispatcher, settings.timeout)
  const verifier = random()
  const state = random()
  const nonce = random()

  const callback = await listen(login.port)
  const redirectUri = `http://127.0.0.1:${callback.port}/callback`
  const url = new URL(provider.authorizationEndpoint.href)
  const scope = ['openid', 'offline_access', ...(settings.scope ?? '').split(' ').filter(Boolean)]
  for (const [name, value] of Object.entries({
    response_type: 'code',
    client_id: client.id,
    redirect_uri: redirectUri,
    scope: [...new Set(scope)].join(' '),
    state,
    nonce,
    ...(runaiApi === undefined ? { code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256' } : {})
  })) url.searchParams.set(name, value)
  io.say(`Open this URL in a browser to log in to ${displayUrl(provider.issuer)}:\n\n  ${url.href}\n`)
  io.say(`Waiting for the browser to come back to ${redirectUri} (up to ${login.timeout} s)…`)
  io.open(url.href)

  let answer: URLSearchParams
  try {
    answer = await callback.next(login.timeout * 1000)
  } finally {
    callback.close()
  }
  if (answer.get('state') !== state) throw new LoginError('the browser came back with another login\'s state: nothing was stored (start again with bearer-proxy login)')
  const refused = answer.get('error')
  if (refused !== null) {
    throw new LoginError(`the provider did not log you in: ${summariseError({ error: refused, error_description: answer.get('error_description') ?? undefined }) ?? 'refused'}`)
  }
  const code = answer.get('code')
  if (code === null || code === '') throw new LoginError('the browser came back without a code')

  if (runaiApi !== undefined) return store(login, client, await exchangeAtRunai(runaiApi, code, redirectUri, settings.timeout, dispatcher), nonce)
  const exchanged = await postForm(settings, provider.tokenEndpoint, new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier }), dispatcher)
  if (exchanged.status !== 200) throw new LoginError(answered(`token endpoint ${displayUrl(provider.tokenEndpoint)}`, exchanged))
  return store(login, client, exchanged.body, nonce)
}

/** Run:ai's token API exchanges the code (OpenAPI 2.22 TokenRequest `exchange_token`); its answer, in OAuth's names. */
async function exchangeAtRunai (api: URL, code: string, redirectUri: string, timeout: number, dispatcher: Dispatcher): Promise<Record<string, unknown>> {
  const answer = await request(api, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ grantType: 'exchange_token', code, redirectUri }),
    dispatcher,
    headersTimeout: timeout * 1000
  })
  const body = asObject(await answer.body.json().catch(() => ({})))
  if (answer.statusCode === 404 || answer.statusCode === 405) {
    throw new LoginError(`${displayUrl(api)} answered ${answer.statusCode}: this control plane has no token API to exchange the code; ` +
      'log in at its realm directly with AUTH=oidc, REALM and UPSTREAM instead')
  }
  if (answer.statusCode !== 200) throw new LoginError(answered(`Run:ai's token API ${displayUrl(api)}`, { status: answer.statusCode, body }))
  return { id_token: body.idToken, refresh_token: body.refreshToken }
}

/** The loopback listener: the first request to `/callback` is the answer, anything else is 404. */
async function listen (port: number): Promise<{ port: number, next: (timeoutMs: number) => Promise<URLSearchParams>, close: () => void }> {
  let deliver: (query: URLSearchParams) => void = () => {}
  const answered = new Promise<URLSearchParams>((resolve) => { deliver = resolve })
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const url = new URL(request.url ?? '/', 'http://127.0.0.1')
    if (url.pathname !== '/callback') {
      response.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found\n')
      return
    }
    const failed = url.searchParams.has('error')
    response.writeHead(failed ? 400 : 200, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' })
      .end(failed ? 'The login did not complete; see the terminal.\n' : 'Logged in: you can close this window and return to the terminal.\n')
    deliver(url.searchParams)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(new LoginError(`cannot listen on 127.0.0.1:${port} for the browser's return: ${error.code === 'EADDRINUSE' ? 'the port is in use; choose another with BEARER_PROXY_LOGIN_PORT' : error.code ?? 'error'}`))
    })
    server.listen(port, '127.0.0.1', resolve)
  })
  let timer: NodeJS.Timeout | undefined
  return {
    port: (server.address() as AddressInfo).port,
    next: async (timeoutMs) => await Promise.race([
      answered,
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new LoginError(`the browser did not come back within ${timeoutMs / 1000} s; start again with bearer-proxy login`)), timeoutMs)
      })
    ]),
    close: () => {
      clearTimeout(timer)
      server.closeAllConnections()
      server.close()
    }
  }
}

/** Opens `url` in the default browser when a person is at a terminal with one; otherwise the printed URL is the way. */
export function openBrowser (url: string): void {
  if (process.stderr.isTTY !== true) return
  const [command, args] = process.platform === 'darwin' ? ['open', [url]] : process.platform === 'win32' ? ['cmd', ['/c', 'start', '', url]] : ['xdg-open', [url]]
  if (process.platform === 'linux' && process.env.DISPLAY === undefined && process.env.WAYLAND_DISPLAY === undefined) return
  const child = spawn(command as string, args as string[], { stdio: 'ignore', detached: true })
  child.on('error', () => {})
  child.unref()
}

export const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code'

/**
 * `bearer-proxy login --device` (RFC 8628): a code to enter at the provider's
 * verification page on any device; the token endpoint polled at the interval it asks
 * for (five seconds more after each `slow_down`) until the person approves or refuses,
 * or the code expires. The refresh token is stored as after a browser login.
 */
export async function loginWithDevice (config: Config, dispatcher: Dispatcher, io: LoginIo): Promise<{ subject: string | undefined }> {
  const { settings, login, client, issuers, runaiApi } = loginOf(config)
  if (runaiApi !== undefined) {
    throw new LoginError('Run:ai\'s token API has no device grant: log in with a browser (bearer-proxy login). ' +
      'On a machine without one, fix BEARER_PROXY_LOGIN_PORT, forward it from yours (ssh -L <port>:127.0.0.1:<port> <this machine>) and open the URL there')
  }
  const provider = await discover(issuers, dispatcher, settings.timeout)
  if (provider.deviceEndpoint === undefined) throw new LoginError(`${displayUrl(provider.issuer)} has no device authorization endpoint: log in with a browser (bearer-proxy login without --device)`)
  const scope = [...new Set(['openid', 'offline_access', ...(settings.scope ?? '').split(' ').filter(Boolean)])].join(' ')
  const started = await postForm(settings, provider.deviceEndpoint, new URLSearchParams({ scope }), dispatcher)
  const { device_code: deviceCode, user_code: userCode, verification_uri: page, verification_uri_complete: complete } = started.body
  if (started.status !== 200 || typeof deviceCode !== 'string' || typeof userCode !== 'string' || typeof page !== 'string') {
    throw new LoginError(answered('the device authorization endpoint', started))
  }
  const expiresAt = Date.now() + (Number(started.body.expires_in) > 0 ? Number(started.body.expires_in) : 600) * 1000
  let interval = Number(started.body.interval) > 0 ? Number(started.body.interval) : 5
  io.say(`To log in to ${displayUrl(provider.issuer)}, open ${page} on any device and enter the code\n\n  ${userCode}\n`)
  if (typeof complete === 'string') io.say(`(or open ${complete})`)
  io.say(`Waiting for the login to be approved (the code is valid for ${Math.round((expiresAt - Date.now()) / 1000)} s)…`)
  for (;;) {
    await new Promise<void>((resolve) => setTimeout(resolve, interval * 1000))
    const polled = await postForm(settings, provider.tokenEndpoint, new URLSearchParams({ grant_type: DEVICE_CODE, device_code: deviceCode }), dispatcher)
    if (polled.status === 200) return store(login, client, polled.body, undefined)
    const error = polled.body.error
    if (error === 'authorization_pending' && Date.now() < expiresAt) continue
    if (error === 'slow_down') {
      interval += 5
      continue
    }
    if (error === 'expired_token' || error === 'authorization_pending') throw new LoginError('the code expired before the login was approved: start again with bearer-proxy login --device')
    if (error === 'access_denied') throw new LoginError('the login was refused at the provider: nothing was stored')
    throw new LoginError(answered(`token endpoint ${displayUrl(provider.tokenEndpoint)}`, polled))
  }
}

/** A token response of a login: its ID token's nonce checked (when the login sent one), its refresh token stored. */
function store (login: Login, client: Client, body: Record<string, unknown>, nonce: string | undefined): { subject: string | undefined } {
  // The ID token came straight from the token endpoint (OpenID Connect Core §3.1.3.7): its nonce ties it to this login.
  let subject: string | undefined
  if (typeof body.id_token === 'string') {
    const claims = decodeJwt(body.id_token)
    if (nonce !== undefined && claims.nonce !== nonce) throw new LoginError('the ID token does not carry this login\'s nonce: nothing was stored')
    subject = claims.sub
  }
  if (typeof body.refresh_token !== 'string' || body.refresh_token === '') {
    throw new LoginError('the provider issued no refresh token: allow the client offline access (the offline_access scope, or "refresh tokens" in its settings)')
  }
  saveLogin(login.store, login.issuer, client.id, new Secret(body.refresh_token))
  return { subject }
}

/**
 * `bearer-proxy logout`: the stored refresh token revoked at the provider's
 * revocation endpoint (RFC 7009) when it has one, and forgotten here either way.
 * Returns what happened, in a line for the user.
 */
export async function logout (config: Config, dispatcher: Dispatcher): Promise<string> {
  const { settings, login, client, issuers } = loginOf(config)
  const refreshToken = readLogin(login.store, login.issuer, client.id)
  if (refreshToken === undefined) return `no login is stored for client ${client.id} at ${login.issuer}`
  let revoked: string
  try {
    const provider = await discover(issuers, dispatcher, settings.timeout)
    if (provider.revocationEndpoint === undefined) {
      revoked = 'the provider has no revocation endpoint, so the refresh token stays valid there until it expires'
    } else {
      const answer = await postForm(settings, provider.revocationEndpoint, new URLSearchParams({ token: refreshToken.reveal(), token_type_hint: 'refresh_token' }), dispatcher)
      revoked = answer.status === 200
        ? 'the refresh token was revoked at the provider'
        : `${answered('the provider\'s revocation endpoint', answer)}, so the refresh token may stay valid there until it expires`
    }
  } catch (error) {
    revoked = `the provider could not be asked to revoke it (${error instanceof LoginError ? error.message : (error as Error).message})`
  }
  removeLogin(login.store, login.issuer, client.id)
  return `Logged out of ${login.issuer}: ${revoked}; the stored login was deleted.`
}
