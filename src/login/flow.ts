import { createHash, randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { decodeJwt } from 'jose'
import { type Dispatcher, request } from 'undici'
import type { Config } from '../config.js'
import { displayUrl } from '../errors.js'
import { Secret } from '../secret.js'
import { authenticateClient } from '../token/client-auth.js'
import { asObject, summariseError } from '../token/dialect.js'
import { discoveryUrl } from '../token/oidc.js'
import { saveLogin } from './store.js'

/**
 * `bearer-proxy login`: a person's own login, by the authorization code flow with
 * PKCE (RFC 7636, S256) and a loopback redirect (RFC 8252 §7.3), stored as a refresh
 * token for `serve`, `check` and `token` to use (`GRANT=login`).
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
}

const random = (): string => randomBytes(32).toString('base64url')

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
    return { issuer, authorizationEndpoint: url('authorization_endpoint'), tokenEndpoint: url('token_endpoint') }
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
  const { token: settings } = config
  const { credentials } = settings
  if (credentials.grant !== 'login' || settings.endpoint.kind !== 'issuer') throw new LoginError('login needs BEARER_PROXY_ISSUER (or REALM with UPSTREAM) and CLIENT_ID')
  const { login, client } = credentials
  const provider = await discover(settings.endpoint.issuers, dispatcher, settings.timeout)
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
    code_challenge: createHash('sha256').update(verifier).digest('base64url'),
    code_challenge_method: 'S256'
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

  const form = new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier })
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' }
  await authenticateClient(settings, { form, headers, endpoint: provider.tokenEndpoint })
  const exchanged = await request(provider.tokenEndpoint, { method: 'POST', headers, body: form.toString(), dispatcher, headersTimeout: settings.timeout * 1000 })
  const body = asObject(await exchanged.body.json().catch(() => ({})))
  if (exchanged.statusCode !== 200) {
    throw new LoginError(`token endpoint ${displayUrl(provider.tokenEndpoint)} answered ${exchanged.statusCode}${summariseError(body, exchanged.statusCode) === undefined ? '' : ` ${summariseError(body, exchanged.statusCode) as string}`}`)
  }
  // The ID token came straight from the token endpoint (OpenID Connect Core §3.1.3.7): its nonce ties it to this login.
  let subject: string | undefined
  if (typeof body.id_token === 'string') {
    const claims = decodeJwt(body.id_token)
    if (claims.nonce !== nonce) throw new LoginError('the ID token does not carry this login\'s nonce: nothing was stored')
    subject = claims.sub
  }
  if (typeof body.refresh_token !== 'string' || body.refresh_token === '') {
    throw new LoginError('the provider issued no refresh token: allow the client offline access (the offline_access scope, or "refresh tokens" in its settings)')
  }
  saveLogin(login.store, login.issuer, client.id, new Secret(body.refresh_token))
  return { subject }
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
