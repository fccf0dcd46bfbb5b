import { createHash, randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { decodeJwt } from 'jose'
import type { Dispatcher } from 'undici'
import type { Config } from '../config.js'
import { type Client, type Login, secretsOf, type TokenSettings } from '../oauth/settings.js'
import { displayUrl } from '../errors.js'
import { type AuthorizationServer, discover, DiscoveryError, type EndpointName } from '../oauth/discovery.js'
import { networkReason, NO_ANSWER_IN_TIME, oauthRequest } from '../oauth/http.js'
import { readSecret, Secret } from '../secret.js'
import { printable } from '../terminal.js'
import type { JsonWebKey } from 'node:crypto'
import { DPoPKey, withProof } from '../oauth/dpop.js'
import { type Clock, REAL_CLOCK } from '../token/clock.js'
import { authenticateClient } from '../oauth/client-auth.js'
import { asObject, summariseError, TokenResponseError } from '../oauth/dialect.js'
import { authorizationCodeGrant, authorizationUrl, deviceAuthorizationRequest, type DeviceAuthorization, deviceCodeGrant, devicePollOutcome, loginScope, processDeviceAuthorizationResponse, revocationRequest } from '../oauth/form.js'
import { readRunaiLogin, runaiCodeExchange } from '../oauth/runai.js'
import { scrubSecrets } from '../oauth/redact.js'
import { readLogin, removeLogin, saveLogin } from '../login-store.js'
import { loginPage, type Outcome, PAGE_HEADERS, redirectHeaders } from './page.js'

/**
 * `bearer-proxy login`: a person's own login, by the authorization code flow with
 * PKCE (RFC 7636, S256) and a loopback redirect (RFC 8252 §7.3), stored as a refresh
 * token for `serve`, `check` and `token` to use (`GRANT=login`).
 *
 * With AUTH=runai the person signs in at the control plane's own realm and the code
 * is exchanged by Run:ai's token API (`grantType: exchange_token`, `code`,
 * `redirectUri`), which renews the login after. That request has no field for a PKCE
 * verifier, so none is sent: `state` and `nonce` still tie the answer to this login.
 *
 * Every request goes through the proxy's own OAuth client (`src/oauth/`): the
 * discovery document checked (its issuer, every endpoint an http(s) URL, https for
 * an https issuer), the whole answer within `TIMEOUT` and 1 MiB, an error answer
 * scrubbed of every secret of the login; everything a provider sends that reaches
 * the terminal is printed without control characters.
 */

/** Why a login did not complete, in the user's words; never a code, verifier or token. */
export class LoginError extends Error {
  /** The provider did not answer in time. */
  readonly late: boolean

  constructor (message: string, late = false) {
    super(message)
    this.name = 'LoginError'
    this.late = late
  }
}

const random = (): string => randomBytes(32).toString('base64url')

/**
 * One login's dealings with its provider: the settings, the dispatcher, and every
 * secret it has sent or received so far (the client's, the code, the verifier, the
 * device code, the refresh token), which an error answer is scrubbed of.
 */
class Session {
  readonly settings: TokenSettings
  readonly dispatcher: Dispatcher
  readonly #secrets: string[] = []

  /** With `DPOP`: the key the login's tokens are bound to (RFC 9449 §5), kept with the login unless it is `DPOP_KEY_FILE`'s. */
  readonly dpop: DPoPKey | undefined

  constructor (settings: TokenSettings, dispatcher: Dispatcher) {
    this.settings = settings
    this.dispatcher = dispatcher
    this.dpop = settings.dpop === 'off' ? undefined : settings.dpopKeyFile === undefined ? DPoPKey.generate() : DPoPKey.read(settings.dpopKeyFile)
  }

  /** The DPoP key to keep with the login: one made for it; none when it is a file's, or there is none. */
  get keptKey (): JsonWebKey | null {
    return this.dpop === undefined || this.settings.dpopKeyFile !== undefined ? null : this.dpop.privateJwk()
  }

  /** `value` is a secret of this login from now on. */
  secret (value: string): string {
    this.#secrets.push(value)
    return value
  }

  scrub (text: string): string {
    const values = [...this.#secrets]
    for (const source of secretsOf(this.settings.credentials)) {
      try {
        values.push(readSecret(source).reveal())
      } catch {}
    }
    return scrubSecrets(text, values, this.settings.credentials.client?.id)
  }

  /** The provider's metadata, through the proxy's discovery and its checks. */
  async discover (issuers: readonly URL[]): Promise<AuthorizationServer> {
    try {
      return await discover(issuers, { dispatcher: this.dispatcher, timeout: this.settings.timeout, allowHttp: this.settings.allowHttpTokenEndpoint, scrub: (text) => this.scrub(text) })
    } catch (error) {
      if (error instanceof DiscoveryError) throw new LoginError(`cannot find the provider: ${error.message}`)
      throw error
    }
  }

  /** A form or JSON POST to one of the provider's endpoints (`authenticated`: with the client's authentication), and its answer. */
  async post (url: URL, what: string, body: URLSearchParams | Record<string, unknown>, authenticated = true, proof = false): Promise<{ status: number, body: Record<string, unknown> }> {
    const form = body instanceof URLSearchParams
    const headers: Record<string, string> = { 'content-type': form ? 'application/x-www-form-urlencoded' : 'application/json', accept: 'application/json' }
    if (form && authenticated) await authenticateClient(this.settings, { form: body, headers, endpoint: url })
    try {
      const send = async (dpop?: string): ReturnType<typeof oauthRequest> => await oauthRequest(url, {
        method: 'POST', headers: dpop === undefined ? headers : { ...headers, dpop }, body: form ? body.toString() : JSON.stringify(body), dispatcher: this.dispatcher, timeout: this.settings.timeout, scrub: (text) => this.scrub(text)
      })
      const answer = proof && this.dpop !== undefined ? await withProof(this.dpop, url, send) : await send()
      return { status: answer.status, body: asObject(answer.body) }
    } catch (error) {
      if (error instanceof TokenResponseError) throw new LoginError(`${what} ${displayUrl(url)} answered ${error.message}`)
      const reason = networkReason(error)
      throw new LoginError(`${what} ${displayUrl(url)} is unreachable: ${reason}`, reason === NO_ANSWER_IN_TIME)
    }
  }
}

/** An endpoint of the provider's metadata, checked; why it cannot be used is a LoginError. */
function endpointOf (provider: AuthorizationServer, name: EndpointName): URL | undefined {
  try {
    return provider.endpoint(name)
  } catch (error) {
    throw new LoginError(`${displayUrl(provider.issuer)}: ${(error as Error).message}`)
  }
}

/**
 * What a login is made of: the settings, where it is kept, the client, the issuers to
 * discover, and Run:ai's token API when it exchanges the code (AUTH=runai).
 */
function loginOf (config: Config): { settings: TokenSettings, login: Login, client: Client, issuers: readonly URL[], runaiApi: URL | undefined } {
  const { tokenSettings: settings } = config
  const { credentials, endpoint } = settings
  if (credentials.grant !== 'login') throw new LoginError('a login needs BEARER_PROXY_ISSUER (or REALM with UPSTREAM) and CLIENT_ID')
  const runaiApi = settings.flavour === 'runai' && endpoint.kind === 'url' ? endpoint.endpoint.url : undefined
  return { settings, login: credentials.login, client: credentials.client, issuers: credentials.login.discovery, runaiApi }
}

/** `<what> answered <status> <error (description)>`: an answer in the words of the proxy's other errors. */
function answered (what: string, { status, body }: { status: number, body: unknown }): string {
  const summary = summariseError(body, status)
  return `${what} answered ${status}${summary === undefined ? '' : ` ${summary}`}`
}

export interface LoginIo {
  /** Where the URL to open and the progress are written (stderr). */
  readonly say: (line: string) => void
  /** Opens the default browser, where one can be opened. */
  readonly open: (url: string) => void
}

/**
 * The authorization code flow: a loopback listener on 127.0.0.1 (the configured port,
 * or any), the URL to open, the callback that carries this login's `state` (others
 * are refused and the wait goes on) or the time limit, then the code exchanged with
 * its verifier, the ID token's `nonce` checked, and the refresh token stored; the
 * browser is told the outcome only then. Returns who logged in, as the ID token says.
 */
export async function loginWithBrowser (config: Config, dispatcher: Dispatcher, io: LoginIo): Promise<{ subject: string | undefined }> {
  const { settings, login, client, issuers, runaiApi } = loginOf(config)
  const session = new Session(settings, dispatcher)
  const provider = await session.discover(issuers)
  const authorizationEndpoint = endpointOf(provider, 'authorization_endpoint')
  if (authorizationEndpoint === undefined) throw new LoginError(`${displayUrl(provider.issuer)} names no authorization endpoint in its discovery document`)
  const verifier = session.secret(random())
  const state = random()
  const nonce = random()

  const callback = await listen(login.port, state)
  const redirectUri = `http://127.0.0.1:${callback.port}/callback`
  const challenge = runaiApi === undefined ? createHash('sha256').update(verifier).digest('base64url') : undefined
  const url = authorizationUrl(authorizationEndpoint, { clientId: client.id, redirectUri, scope: loginScope(settings.scope), state, nonce, challenge })
  io.say(`Open this URL in a browser to log in to ${displayUrl(provider.issuer)}:\n\n  ${url.href}\n`)
  io.say(`Waiting for the browser to come back to ${redirectUri} (up to ${login.timeout} s)…`)
  io.open(url.href)

  const where = displayUrl(provider.issuer)
  try {
    const answer = await callback.next(login.timeout * 1000)
    const refused = answer.get('error')
    if (refused !== null) {
      const description = answer.get('error_description') ?? undefined
      callback.finish({ kind: 'denied', provider: where, error: refused, description })
      throw new LoginError(`the provider did not log you in: ${summariseError({ error: refused, error_description: description }) ?? 'refused'}`)
    }
    const code = answer.get('code')
    if (code === null || code === '') {
      callback.finish({ kind: 'provider_error', provider: where, reason: 'sent the browser back without a code' })
      throw new LoginError('the browser came back without a code')
    }
    session.secret(code)
    const exchanged = runaiApi !== undefined
      ? await exchangeAtRunai(session, runaiApi, code, redirectUri)
      : await session.post(provider.tokenEndpoint, 'token endpoint', authorizationCodeGrant(code, redirectUri, verifier), true, true)
    if (exchanged.status !== 200) {
      // invalid_grant: the code expired, or was used already.
      callback.finish(exchanged.body.error === 'invalid_grant' ? { kind: 'expired', provider: where } : { kind: 'provider_error', provider: where, reason: `refused the code (it answered ${exchanged.status})` })
      throw new LoginError(answered(`token endpoint ${displayUrl(runaiApi ?? provider.tokenEndpoint)}`, exchanged))
    }
    const outcome = store(login, client, exchanged.body, { nonce }, session.keptKey)
    callback.finish({ kind: 'logged_in', provider: where, subject: outcome.subject })
    return outcome
  } catch (error) {
    // A provider that did not answer in time: the login expired; anything else, the provider's error.
    callback.finish(error instanceof LoginError && error.late ? { kind: 'expired', provider: where } : { kind: 'provider_error', provider: where, reason: 'could not complete the login' })
    throw error
  } finally {
    await callback.close()
  }
}

/** Run:ai's token API exchanges the code (OpenAPI 2.22 TokenRequest `exchange_token`); its answer, in OAuth's names. */
async function exchangeAtRunai (session: Session, api: URL, code: string, redirectUri: string): Promise<{ status: number, body: Record<string, unknown> }> {
  const answer = await session.post(api, 'Run:ai\'s token API', runaiCodeExchange(code, redirectUri), false)
  if (answer.status === 404 || answer.status === 405) {
    throw new LoginError(`${displayUrl(api)} answered ${answer.status}: this control plane has no token API to exchange the code; ` +
      'log in at its realm directly with AUTH=oidc, REALM and UPSTREAM instead')
  }
  if (answer.status !== 200) throw new LoginError(answered(`Run:ai's token API ${displayUrl(api)}`, answer))
  return { status: 200, body: readRunaiLogin(answer.body) }
}

/** How long, after the login's outcome, the listener waits for the browser to fetch the page that shows it. */
const PAGE_GRACE_MS = 5000
const RESULT = '/result'
const NOT_THIS_LOGIN = '/not-this-login'

interface Callback {
  readonly port: number
  readonly next: (timeoutMs: number) => Promise<URLSearchParams>
  /** Tells the browser that came back how the login ended: a 303 to the page that shows it. */
  readonly finish: (outcome: Outcome) => void
  /** Once the browser has its page (or a few seconds have passed), the listener closes. */
  readonly close: () => Promise<void>
}

/**
 * The loopback listener. It answers only requests addressed to it by name
 * (`Host: 127.0.0.1:<port>` or `localhost:<port>`: a page that re-points another name
 * at 127.0.0.1 is refused). The first `/callback` carrying this login's `state` is
 * the answer; when the login ends, its browser is sent (303) to `/result`, which
 * shows the outcome, so that the code and state stay neither in the address bar nor
 * in the history. A callback with another state, or a second one, is sent to a page
 * saying so and the wait goes on; anything else is 404. Every answer is a page of
 * `page.ts`, with its headers.
 */
async function listen (port: number, state: string): Promise<Callback> {
  let deliver: (query: URLSearchParams) => void = () => {}
  const answered = new Promise<URLSearchParams>((resolve) => { deliver = resolve })
  let waiting: ServerResponse | undefined
  let outcome: Outcome | undefined
  let shown: () => void = () => {}
  const pageShown = new Promise<void>((resolve) => { shown = resolve })
  let bound = 0
  const show = (response: ServerResponse, what: Outcome): void => {
    const { status, html } = loginPage(what)
    response.writeHead(status, PAGE_HEADERS).end(html)
  }
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const host = request.headers.host
    if (host !== `127.0.0.1:${bound}` && host !== `localhost:${bound}`) {
      show(response, { kind: 'wrong_host', address: `http://127.0.0.1:${bound}/` })
      return
    }
    const url = new URL(request.url ?? '/', 'http://127.0.0.1')
    if (url.pathname === RESULT && outcome !== undefined) {
      show(response, outcome)
      shown()
      return
    }
    if (url.pathname === NOT_THIS_LOGIN) {
      show(response, { kind: 'not_this_login' })
      return
    }
    if (url.pathname !== '/callback') {
      show(response, { kind: 'not_found' })
      return
    }
    if (url.searchParams.get('state') !== state || waiting !== undefined) {
      response.writeHead(303, redirectHeaders(NOT_THIS_LOGIN)).end()
      return
    }
    waiting = response
    deliver(url.searchParams)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(new LoginError(`cannot listen on 127.0.0.1:${port} for the browser's return: ${error.code === 'EADDRINUSE' ? 'the port is in use; choose another with BEARER_PROXY_LOGIN_PORT' : error.code ?? 'error'}`))
    })
    server.listen(port, '127.0.0.1', resolve)
  })
  bound = (server.address() as AddressInfo).port
  let timer: NodeJS.Timeout | undefined
  return {
    port: bound,
    next: async (timeoutMs) => await Promise.race([
      answered,
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new LoginError(`the browser did not come back within ${timeoutMs / 1000} s; start again with bearer-proxy login`)), timeoutMs)
      })
    ]),
    finish: (ended) => {
      if (waiting === undefined || outcome !== undefined) return
      outcome = ended
      waiting.writeHead(303, redirectHeaders(RESULT)).end()
    },
    close: async () => {
      clearTimeout(timer)
      if (outcome !== undefined) {
        let grace: NodeJS.Timeout | undefined
        await Promise.race([pageShown, new Promise<void>((resolve) => { grace = setTimeout(resolve, PAGE_GRACE_MS) })])
        clearTimeout(grace)
      }
      server.closeAllConnections()
      server.close()
    }
  }
}

/**
 * How `url` is opened on `platform`: a program and its arguments, run without a
 * shell, so nothing in the URL is read as a command. (Windows: rundll32 hands it to
 * its protocol handler as one argument, where cmd's `start` would split it at `&`.)
 */
export function browserCommand (platform: NodeJS.Platform, url: string): [string, string[]] {
  if (platform === 'darwin') return ['open', [url]]
  if (platform === 'win32') return ['rundll32', ['url.dll,FileProtocolHandler', url]]
  return ['xdg-open', [url]]
}

/**
 * Opens `url` (an http(s) URL, checked again here) in the default browser when a
 * person is at a terminal with one; otherwise the printed URL is the way.
 */
export function openBrowser (url: string): void {
  if (process.stderr.isTTY !== true || !/^https?:\/\//.test(url)) return
  if (process.platform === 'linux' && process.env.DISPLAY === undefined && process.env.WAYLAND_DISPLAY === undefined) return
  const [command, args] = browserCommand(process.platform, url)
  const child = spawn(command, args, { stdio: 'ignore', detached: true, shell: false })
  child.on('error', () => {})
  child.unref()
}

/** The real clock, with timers that keep the process alive: a login waits for its person, with nothing else running. */
const WAITING_CLOCK: Clock = { ...REAL_CLOCK, setTimeout: (run, ms) => setTimeout(run, ms) }

/**
 * `bearer-proxy login --device` (RFC 8628): a code to enter at the provider's
 * verification page on any device; the token endpoint polled at the interval it asks
 * for (five seconds more after each `slow_down`) until the person approves or refuses,
 * or the code expires. The refresh token is stored as after a browser login.
 */
export async function loginWithDevice (config: Config, dispatcher: Dispatcher, io: LoginIo, clock: Clock = WAITING_CLOCK): Promise<{ subject: string | undefined }> {
  const { settings, login, client, issuers, runaiApi } = loginOf(config)
  if (runaiApi !== undefined) {
    throw new LoginError('Run:ai\'s token API has no device grant: log in with a browser (bearer-proxy login). ' +
      'On a machine without one, fix BEARER_PROXY_LOGIN_PORT, forward it from yours (ssh -L <port>:127.0.0.1:<port> <this machine>) and open the URL there')
  }
  const session = new Session(settings, dispatcher)
  const provider = await session.discover(issuers)
  const deviceEndpoint = endpointOf(provider, 'device_authorization_endpoint')
  if (deviceEndpoint === undefined) throw new LoginError(`${displayUrl(provider.issuer)} has no device authorization endpoint: log in with a browser (bearer-proxy login without --device)`)
  const started = await session.post(deviceEndpoint, 'the device authorization endpoint', deviceAuthorizationRequest(loginScope(settings.scope)))
  if (started.status !== 200) throw new LoginError(answered('the device authorization endpoint', started))
  let device: DeviceAuthorization
  try {
    device = processDeviceAuthorizationResponse(provider.issuer, started.body, settings.allowHttpTokenEndpoint)
  } catch (error) {
    if (!(error instanceof TokenResponseError)) throw error
    throw new LoginError(`the device authorization endpoint ${displayUrl(deviceEndpoint)} answered ${error.message.replace(/^discovery document /, '')}`)
  }
  session.secret(device.deviceCode)
  const expiresAt = clock.now() + device.expiresInMs
  let interval = device.intervalMs
  io.say(`To log in to ${displayUrl(provider.issuer)}, open ${device.page.href} on any device and enter the code\n\n  ${printable(device.userCode, 64)}\n`)
  if (device.complete !== undefined) io.say(`(or open ${device.complete.href})`)
  io.say(`Waiting for the login to be approved (the code is valid for ${Math.round(device.expiresInMs / 1000)} s)…`)
  const expired = new LoginError('the code expired before the login was approved: start again with bearer-proxy login --device')
  for (;;) {
    // Never past the code's expiry: a poll that would come after it is not made; the login ends when the code does.
    const left = expiresAt - clock.now()
    await new Promise<void>((resolve) => { clock.setTimeout(resolve, Math.max(0, Math.min(interval, left))) })
    if (interval > left) throw expired
    const polled = await session.post(provider.tokenEndpoint, 'token endpoint', deviceCodeGrant(device.deviceCode), true, true)
    switch (devicePollOutcome(polled.status, polled.body)) {
      case 'granted': return store(login, client, polled.body, { nonce: undefined }, session.keptKey)
      case 'slow_down': interval = Math.min(interval + 5000, 60_000); break
      case 'pending': break
      case 'expired': throw expired
      case 'denied': throw new LoginError('the login was refused at the provider: nothing was stored')
      case 'failed': throw new LoginError(answered(`token endpoint ${displayUrl(provider.tokenEndpoint)}`, polled))
    }
    if (clock.now() >= expiresAt) throw expired
  }
}

/**
 * A token response of a login: its ID token checked, its refresh token stored. The
 * browser login sent a `nonce` and must get an ID token carrying it (OpenID Connect
 * Core §3.1.3.7: it came straight from the token endpoint); the device login sent
 * none, so an ID token that carries one is not this login's.
 */
function store (login: Login, client: Client, body: Record<string, unknown>, expected: { nonce: string | undefined }, dpopKey: JsonWebKey | null): { subject: string | undefined } {
  const idToken = body.id_token
  if (idToken === undefined && expected.nonce !== undefined) throw new LoginError('the provider answered without the ID token a login with the openid scope gets: nothing was stored')
  let subject: string | undefined
  if (idToken !== undefined) {
    let claims
    try {
      claims = decodeJwt(String(idToken))
    } catch {
      throw new LoginError('the provider answered with an ID token that is not a JWT: nothing was stored')
    }
    if (claims.nonce !== expected.nonce) throw new LoginError('the ID token does not carry this login\'s nonce: nothing was stored')
    subject = typeof claims.sub === 'string' ? printable(claims.sub, 200) : undefined
  }
  if (typeof body.refresh_token !== 'string' || body.refresh_token === '') {
    throw new LoginError('the provider issued no refresh token: allow the client offline access (the offline_access scope, or "refresh tokens" in its settings)')
  }
  saveLogin(login.store, login.issuer, client.id, new Secret(body.refresh_token), dpopKey)
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
  const session = new Session(settings, dispatcher)
  session.secret(refreshToken.reveal())
  let revoked: string
  try {
    const provider = await session.discover(issuers)
    const revocation = endpointOf(provider, 'revocation_endpoint')
    if (revocation === undefined) {
      revoked = 'the provider has no revocation endpoint, so the refresh token stays valid there until it expires'
    } else {
      const answer = await session.post(revocation, 'the provider\'s revocation endpoint', revocationRequest(refreshToken.reveal()))
      revoked = answer.status === 200
        ? 'the refresh token was revoked at the provider'
        : `${answered('the provider\'s revocation endpoint', answer)}, so the refresh token may stay valid there until it expires`
    }
  } catch (error) {
    if (!(error instanceof LoginError)) throw error
    revoked = `the provider could not be asked to revoke it (${error.message}), so it may stay valid there until it expires`
  }
  removeLogin(login.store, login.issuer, client.id)
  return `Logged out of ${login.issuer}: ${revoked}; the stored login was deleted.`
}
