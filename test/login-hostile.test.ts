import { once } from 'node:events'
import { existsSync, mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import pino from 'pino'
import { loadConfig } from '../src/config.js'
import { browserCommand, loginWithDevice } from '../src/login/flow.js'
import { createDispatcher } from '../src/outbound.js'
import { readLogin, saveLogin } from '../src/login-store.js'
import { Secret } from '../src/secret.js'
import { assertNoSecret, fragments, spellings } from './helpers/secrets.js'
import { type Returned, returnTo } from './helpers/browser.js'
import { bounded, cleanDirectory, collect, rawHttp, runCli, spawnCli, type Teardown, waitForLine } from './helpers/stack.js'
import { FakeClock } from './helpers/clock.js'
import { makePki } from './helpers/tls.js'
import { jwt, type Scripted, startTokenEndpoint, type TokenCall, type TokenEndpoint } from './helpers/token-endpoint.js'

/**
 * `login`, `login --device` and `logout` against a hostile identity provider: they
 * are held to the proxy's own checks (discovery, endpoints, time and size limits,
 * scrubbing), print nothing a provider sends raw, and their loopback listener
 * answers only its own login.
 */

const SECRET = 'login-Client-Secret-6632'
const REFRESH = 'rt-Stored-Login-Value-5519'
const pki = makePki()
const storeOf = (): string => join(mkdtempSync(join(tmpdir(), 'bearer-proxy-hostile-login-')), 'logins.json')
/** Every secret these tests hand out or the CLI holds, in every spelling: none may reach the terminal. */
const secrets: string[] = [SECRET, REFRESH]
const printed: string[] = []

type Route = (call: TokenCall, self: TokenEndpoint) => Scripted
/** A provider on 127.0.0.1 (https with `tls`): its discovery document from `document`, its other paths from `routes`. */
async function provider (t: Teardown, document: (self: string) => Record<string, unknown>, routes: Record<string, Route> = {}, tls = false): Promise<TokenEndpoint> {
  const self: TokenEndpoint = await startTokenEndpoint(t, (call) => {
    const path = call.path.split('?')[0] as string
    if (path === '/.well-known/openid-configuration') return { body: document(self.url) }
    return routes[path]?.(call, self) ?? { status: 404, body: { error: 'not_found' } }
  }, tls ? { key: pki.key, cert: pki.cert } : undefined)
  return self
}

const standard = (self: string): Record<string, unknown> => ({
  issuer: self,
  authorization_endpoint: `${self}/auth`,
  token_endpoint: `${self}/token`,
  device_authorization_endpoint: `${self}/device/auth`,
  revocation_endpoint: `${self}/revoke`
})

const envOf = (issuer: string, extra: Record<string, string> = {}): Record<string, string> => ({
  BEARER_PROXY_ISSUER: issuer,
  BEARER_PROXY_CLIENT_ID: 'cli',
  BEARER_PROXY_CLIENT_SECRET: SECRET,
  BEARER_PROXY_TOKEN_STORE: storeOf(),
  BEARER_PROXY_CA_FILE: pki.caFile,
  ...extra
})

async function cli (args: string[], env: Record<string, string>): Promise<{ code: number | null, stderr: string }> {
  const result = await runCli(args, env, { cwd: cleanDirectory(), timeoutMs: 20_000 })
  printed.push(result.stderr, result.stdout)
  return result
}

t.test('an https issuer whose document names plain-http endpoints elsewhere: login, login --device and logout send nothing there', async (t) => {
  const sink = await provider(t, standard, { '/token': () => ({ body: {} }), '/device/auth': () => ({ body: {} }), '/revoke': () => ({ body: {} }) })
  const elsewhere = (name: string) => (self: string): Record<string, unknown> => ({ ...standard(self), [name]: `${sink.url}/${name === 'token_endpoint' ? 'token' : name === 'revocation_endpoint' ? 'revoke' : name === 'authorization_endpoint' ? 'auth' : 'device/auth'}` })

  const tokenElsewhere = await provider(t, elsewhere('token_endpoint'), {}, true)
  const login = await cli(['login'], envOf(tokenElsewhere.url))
  t.equal(login.code, 1)
  t.match(login.stderr, /names a plain http token endpoint \(http:\/\/127\.0\.0\.1:\d+\/token\) for an https issuer: the credentials would travel unencrypted, so none were sent/)
  t.notMatch(login.stderr, /Open this URL/, 'the refusal comes before any URL is printed')

  const authorizationElsewhere = await provider(t, elsewhere('authorization_endpoint'), {}, true)
  t.match((await cli(['login'], envOf(authorizationElsewhere.url))).stderr, /names a plain http authorization endpoint/)

  const deviceElsewhere = await provider(t, elsewhere('device_authorization_endpoint'), {}, true)
  const device = await cli(['login', '--device'], envOf(deviceElsewhere.url))
  t.equal(device.code, 1)
  t.match(device.stderr, /names a plain http device authorization endpoint/)

  // logout: the stored refresh token is never sent to a plain http revocation endpoint; the login is forgotten all the same.
  const revocationElsewhere = await provider(t, elsewhere('revocation_endpoint'), {}, true)
  const env = envOf(revocationElsewhere.url)
  saveLogin(env.BEARER_PROXY_TOKEN_STORE as string, revocationElsewhere.url, 'cli', new Secret(REFRESH))
  const logout = await cli(['logout'], env)
  t.equal(logout.code, 0, logout.stderr)
  t.match(logout.stderr, /the provider could not be asked to revoke it \(.*names a plain http revocation endpoint.*\), so it may stay valid there until it expires; the stored login was deleted/)
  t.equal(readLogin(env.BEARER_PROXY_TOKEN_STORE as string, revocationElsewhere.url, 'cli'), undefined)

  t.same(sink.calls.map((call) => call.path), [], 'nothing reached the plain http endpoints: no code, secret, device code or refresh token')

  // Allowed on purpose: the device grant then goes there.
  const allowed = await cli(['login', '--device'], envOf(deviceElsewhere.url, { BEARER_PROXY_ALLOW_HTTP_TOKEN_ENDPOINT: 'true' }))
  t.equal(allowed.code, 1)
  t.same(sink.calls.map((call) => call.path), ['/device/auth'], 'with ALLOW_HTTP_TOKEN_ENDPOINT=true the endpoint is used')
})

t.test('a foreign issuer, and endpoints that are not http(s) URLs, are refused before anything is printed or opened', async (t) => {
  const foreign = await provider(t, (self) => ({ ...standard(self), issuer: 'https://idp.evil.example' }))
  for (const args of [['login'], ['login', '--device']]) {
    const result = await cli(args, envOf(foreign.url))
    t.equal(result.code, 1)
    t.match(result.stderr, /answered a document that names another issuer than http:\/\/127\.0\.0\.1:\d+/, args.join(' '))
  }
  const env = envOf(foreign.url)
  saveLogin(env.BEARER_PROXY_TOKEN_STORE as string, foreign.url, 'cli', new Secret(REFRESH))
  t.match((await cli(['logout'], env)).stderr, /names another issuer/)
  t.ok(foreign.calls.every((call) => ['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server'].includes(call.path)), 'the foreign document is read and nothing else is asked')

  for (const bad of ['javascript:alert(document.cookie)', 'file:///etc/passwd', 'data:text/html,<script>x</script>', 'https://user:pw@idp.example/auth', 'not a url', 42]) {
    const hostile = await provider(t, (self) => ({ ...standard(self), authorization_endpoint: bad }))
    const result = await cli(['login'], envOf(hostile.url))
    t.equal(result.code, 1)
    t.match(result.stderr, /discovery document has no usable authorization_endpoint/, String(bad))
    t.notMatch(result.stderr, /javascript:|file:|data:|Open this URL/)
  }
  for (const bad of ['javascript:alert(1)', 'file:///etc/passwd']) {
    const hostile = await provider(t, (self) => ({ ...standard(self), token_endpoint: bad }))
    t.match((await cli(['login'], envOf(hostile.url))).stderr, /answered a document that has no usable token_endpoint/)
  }
})

t.test('the browser\'s opener takes the URL as one argument, without a shell, on every platform', async (t) => {
  const url = 'https://idp.example/auth?client_id=cli&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcallback&state=a"&calc.exe'
  t.same(browserCommand('win32', url), ['rundll32', ['url.dll,FileProtocolHandler', url]], 'Windows: no cmd /c start, so & cuts nothing')
  t.same(browserCommand('darwin', url), ['open', [url]])
  t.same(browserCommand('linux', url), ['xdg-open', [url]])
})

/** Characters that drive a terminal: ESC, BEL, CSI (C1), DEL, bidi overrides. */
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/
const ESCAPES = '\u001b[2J\u001b]8;;https://evil.example/\u0007click\u001b]8;;\u0007\u001b[2K\u009b31m\u202e\u0007'

t.test('what a provider sends reaches the terminal without control characters: codes, pages, names, errors', async (t) => {
  let poll = 0
  const device = await provider(t, standard, {
    '/device/auth': () => ({ body: { device_code: 'dc-Hostile-Device-Code-8813', user_code: `AB${ESCAPES}CD`, verification_uri: `http://127.0.0.1:1/device${ESCAPES}`, verification_uri_complete: `http://127.0.0.1:1/device?code=${ESCAPES}`, expires_in: 60, interval: 0.05 } }),
    '/token': () => ++poll === 1
      ? { status: 400, body: { error: 'authorization_pending' } }
      : { status: 400, body: { error: 'server_error', error_description: `it broke ${ESCAPES} badly` } }
  })
  secrets.push('dc-Hostile-Device-Code-8813')
  const result = await cli(['login', '--device'], envOf(device.url))
  t.equal(result.code, 1)
  t.match(result.stderr, /open http:\/\/127\.0\.0\.1:1\/device%1B\[2J%1B\]8;;https:\/\/evil\.example\/%07click/, 'the page, as a URL whose control characters are percent-encoded')
  t.match(result.stderr, /\n {2}AB\[2J\]8;;https:\/\/evil\.example\/click\]8;;\[2K31mCD\n/, 'the code, without its control characters')
  t.match(result.stderr, /answered 400 server_error \(it broke/)
  t.notMatch(result.stderr, CONTROL, 'no control character reached the terminal')

  const junk = await provider(t, standard, { '/device/auth': () => ({ body: { device_code: 'dc', user_code: 'X', verification_uri: 'javascript:alert(1)' } }) })
  const refused = await cli(['login', '--device'], envOf(junk.url))
  t.match(refused.stderr, /the device authorization endpoint http:\/\/127\.0\.0\.1:\d+\/device\/auth answered has no usable verification_uri/)
  t.notMatch(refused.stderr, /javascript:/)
})

/**
 * `bearer-proxy login` against `idp`, the test playing the browser: the URL it
 * prints, and the callback sent with `state` (this login's unless told) and a code.
 */
async function browserLogin (t: Teardown, env: Record<string, string>): Promise<{ authorization: URL, callback: (query: Record<string, string>) => Promise<Returned>, exit: () => Promise<{ code: number, stderr: string }> }> {
  const child = spawnCli(['login'], env, cleanDirectory())
  t.teardown(() => { child.kill('SIGKILL') })
  const output = collect(child)
  const exited = once(child, 'exit') as Promise<[number]>
  const line = await waitForLine(child, /^\s+http:\/\/127\.0\.0\.1:\d+\/auth\?/, 10_000, 'stderr')
  const authorization = new URL(line.trim())
  return {
    authorization,
    callback: async (query) => {
      const back = new URL(authorization.searchParams.get('redirect_uri') as string)
      for (const [name, value] of Object.entries({ state: authorization.searchParams.get('state') ?? '', ...query })) back.searchParams.set(name, value)
      return await returnTo(back)
    },
    exit: async () => {
      const [code] = await bounded(exited, 15_000, 'the login to end')
      printed.push(output().stderr)
      return { code, stderr: output().stderr }
    }
  }
}

t.test('the ID token: it must come back from a browser login, be a JWT and carry this login\'s nonce; otherwise nothing is stored and the browser is not told "Logged in"', async (t) => {
  let pending: Record<string, unknown> = {}
  let nonce = ''
  const idp = await provider(t, standard, { '/token': () => ({ body: pending }) })
  for (const [why, make, said] of [
    ['no ID token', async () => ({ access_token: 'at', refresh_token: 'rt-Never-Stored-1' }), /the provider answered without the ID token a login with the openid scope gets: nothing was stored/],
    ['another nonce', async () => ({ id_token: await jwt(60, { sub: 'alice', nonce: 'someone-elses' }), refresh_token: 'rt-Never-Stored-2' }), /the ID token does not carry this login's nonce: nothing was stored/],
    ['no nonce', async () => ({ id_token: await jwt(60, { sub: 'alice' }), refresh_token: 'rt-Never-Stored-3' }), /does not carry this login's nonce/],
    ['not a JWT', async () => ({ id_token: 'not-a-jwt', refresh_token: 'rt-Never-Stored-4' }), /an ID token that is not a JWT: nothing was stored/]
  ] as const) {
    const env = envOf(idp.url)
    const login = await browserLogin(t, env)
    nonce = login.authorization.searchParams.get('nonce') ?? ''
    pending = await make()
    secrets.push(String(pending.refresh_token), `code-${why.replace(/ /g, '-')}-7731`)
    const page = await login.callback({ code: `code-${why.replace(/ /g, '-')}-7731` })
    t.equal(page.status, 502, `${why}: the browser is told the login did not complete`)
    t.match(page.body, /The login did not complete/)
    t.notMatch(page.body, /Logged in/)
    const { code, stderr } = await login.exit()
    t.equal(code, 1)
    t.match(stderr, said, why)
    t.notOk(existsSync(env.BEARER_PROXY_TOKEN_STORE as string), `${why}: nothing stored`)
  }
  // The good one: the subject is printed without the control characters it carries.
  const env = envOf(idp.url)
  const login = await browserLogin(t, env)
  pending = { id_token: await jwt(60, { sub: `alice${ESCAPES}`, nonce: login.authorization.searchParams.get('nonce') }), refresh_token: 'rt-Good-Login-9034' }
  secrets.push('rt-Good-Login-9034')
  secrets.push('code-good-5521')
  const page = await login.callback({ code: 'code-good-5521' })
  t.equal(page.status, 200)
  t.match(page.body, /Logged in/)
  const { code, stderr } = await login.exit()
  t.equal(code, 0, stderr)
  t.match(stderr, /Logged in as alice\[2J\]8;;https:\/\/evil\.example\/click/)
  t.notMatch(stderr, CONTROL)
  t.equal(readLogin(env.BEARER_PROXY_TOKEN_STORE as string, idp.url, 'cli')?.reveal(), 'rt-Good-Login-9034')
  // Every code exchange carried the client's secret, the verifier and the code, and went to the token endpoint only.
  t.ok(idp.calls.filter((call) => call.path === '/token').every((call) => call.fields.grant_type === 'authorization_code' && typeof call.fields.code_verifier === 'string' && call.fields.client_secret === SECRET))
  t.ok(nonce.length > 20)
})

t.test('login --device sent no nonce: an ID token that carries one is not this login\'s, and nothing is stored', async (t) => {
  let pending: Record<string, unknown> = { id_token: await jwt(60, { sub: 'mallory', nonce: 'from-another-login' }), refresh_token: 'rt-Device-Nonce-3390' }
  const idp = await provider(t, standard, {
    '/device/auth': () => ({ body: { device_code: 'dc-Nonce-Device-4471', user_code: 'WXYZ-1234', verification_uri: 'http://127.0.0.1:1/device', expires_in: 60, interval: 0.05 } }),
    '/token': () => ({ body: pending })
  })
  secrets.push('dc-Nonce-Device-4471', 'rt-Device-Nonce-3390')
  const env = envOf(idp.url)
  const result = await cli(['login', '--device'], env)
  t.equal(result.code, 1)
  t.match(result.stderr, /the ID token does not carry this login's nonce: nothing was stored/)
  t.notOk(existsSync(env.BEARER_PROXY_TOKEN_STORE as string))
  // Without a nonce, as the device grant issues it: stored.
  pending = { id_token: await jwt(60, { sub: 'bob' }), refresh_token: 'rt-Device-Good-7782' }
  secrets.push('rt-Device-Good-7782')
  const good = await cli(['login', '--device'], env)
  t.equal(good.code, 0, good.stderr)
  t.match(good.stderr, /Logged in as bob\./)
})

t.test('the loopback listener answers only its own name and its own login: another Host is 421, another state is refused and the login goes on', async (t) => {
  let good: Record<string, unknown> = {}
  const idp = await provider(t, standard, { '/token': () => ({ body: good }) })
  const env = envOf(idp.url)
  const login = await browserLogin(t, env)
  const back = new URL(login.authorization.searchParams.get('redirect_uri') as string)
  const state = login.authorization.searchParams.get('state') ?? ''
  for (const host of ['evil.example', `evil.example:${back.port}`, `127.0.0.1:${Number(back.port) + 1}`, `localhost.evil.example:${back.port}`, '']) {
    const answer = await rawHttp(back.origin, `GET /callback?state=${state}&code=stolen-8841 HTTP/1.1\r\n${host === '' ? '' : `Host: ${host}\r\n`}Connection: close\r\n\r\n`)
    t.match(answer, /^HTTP\/1\.1 (421|400) /, `Host: ${host || '(none)'}`)
    t.notMatch(answer, /Logged in/)
  }
  for (const forged of ['someone-elses-state', '', `${state}x`]) {
    const refused = await login.callback({ state: forged, code: 'forged-code-3321' })
    t.equal(refused.status, 400, `state ${JSON.stringify(forged)}`)
    t.match(refused.body, /Not the login the terminal is waiting for/)
    t.equal(refused.redirect.location, '/not-this-login', 'sent to a page without the code')
  }
  const erroring = await login.callback({ state: 'someone-elses-state', error: 'access_denied' })
  t.equal(erroring.status, 400, 'an error with another state does not end the login either')
  t.same(idp.calls.filter((call) => call.path === '/token').length, 0, 'no forged code was exchanged')

  good = { id_token: await jwt(60, { sub: 'alice', nonce: login.authorization.searchParams.get('nonce') }), refresh_token: 'rt-After-Forgeries-2217' }
  secrets.push('rt-After-Forgeries-2217')
  secrets.push('code-real-6612')
  const page = await login.callback({ code: 'code-real-6612' })
  t.equal(page.status, 200)
  const { code, stderr } = await login.exit()
  t.equal(code, 0, stderr)
  t.match(stderr, /Logged in as alice\./)
  t.same(idp.calls.filter((call) => call.path === '/token').map((call) => call.fields.code), ['code-real-6612'])
  t.match(readFileSync(env.BEARER_PROXY_TOKEN_STORE as string, 'utf8'), /rt-After-Forgeries-2217/)
})

t.test('every request of login and logout ends within TIMEOUT and reads at most 1 MiB: trickled and oversized answers', async (t) => {
  const env = (url: string): Record<string, string> => envOf(url, { BEARER_PROXY_TIMEOUT: '1' })
  const trickling = await provider(t, standard)
  trickling.answer = () => ({ body: '', stream: 'trickle' })
  const started = Date.now()
  const slow = await cli(['login'], env(trickling.url))
  t.equal(slow.code, 1)
  t.match(slow.stderr, /cannot find the provider: no usable discovery document: http:\/\/127\.0\.0\.1:\d+\/\.well-known\/openid-configuration is unreachable: no answer in time; \S+\/\.well-known\/oauth-authorization-server is unreachable: no answer in time/)
  t.ok(Date.now() - started < 10_000, 'the trickle is cut off at TIMEOUT, not waited out')

  const huge = await provider(t, standard)
  huge.answer = () => ({ body: '', stream: 'huge' })
  const big = await cli(['login', '--device'], env(huge.url))
  t.equal(big.code, 1)
  t.match(big.stderr, /discovery document|larger than 1 MiB/)
  t.match(big.stderr, /with a body larger than 1 MiB/)

  // The device endpoint trickles; then logout's revocation endpoint does.
  const device = await provider(t, standard, { '/device/auth': () => ({ body: '', stream: 'trickle' }), '/revoke': () => ({ body: '', stream: 'trickle' }) })
  const stalled = await cli(['login', '--device'], env(device.url))
  t.match(stalled.stderr, /the device authorization endpoint http:\/\/127\.0\.0\.1:\d+\/device\/auth is unreachable: no answer in time/)
  const loggedIn = env(device.url)
  saveLogin(loggedIn.BEARER_PROXY_TOKEN_STORE as string, device.url, 'cli', new Secret(REFRESH))
  const out = await cli(['logout'], loggedIn)
  t.equal(out.code, 0)
  t.match(out.stderr, /could not be asked to revoke it \(the provider's revocation endpoint \S+ is unreachable: no answer in time\)/)
})

t.test('an error answer that echoes the client\'s secret or the refresh token: scrubbed from login\'s and logout\'s messages', async (t) => {
  const basic = Buffer.from(`cli:${SECRET}`).toString('base64')
  const echo = (call: TokenCall): Scripted => ({ status: 400, body: { error: 'invalid_client', error_description: `refused ${SECRET} and Basic ${basic} for ${String(call.fields.token ?? '')}` } })
  const idp = await provider(t, standard, { '/device/auth': echo, '/revoke': echo })
  const device = await cli(['login', '--device'], envOf(idp.url))
  t.equal(device.code, 1)
  t.match(device.stderr, /answered 400 invalid_client \(refused \[redacted\] and Basic \[redacted\]/, 'scrubbed before it is read')
  const env = envOf(idp.url)
  saveLogin(env.BEARER_PROXY_TOKEN_STORE as string, idp.url, 'cli', new Secret(REFRESH))
  const out = await cli(['logout'], env)
  t.match(out.stderr, /revocation endpoint answered 400 invalid_client \(refused \[redacted\] and Basic \[redacted\] for \[redacted\]\)/)
})

t.test('the secrets scan: nothing login and logout printed against these providers holds a secret, code or token', async (t) => {
  const all = [...fragments(secrets), ...secrets.flatMap((secret) => spellings(secret, 'cli'))]
  assertNoSecret(t, 'login and logout output', printed.join('\n'), all)
  t.ok(printed.length > 10, 'the runs above were scanned')
})

t.test('login --device bounds what the provider says before it goes into a timer: an interval of 1e9 or 0.001, slow_down past the code\'s expiry (on the clock)', async (t) => {
  for (const [interval, expiresIn, answer, polled] of [
    [1e9, 2, 'authorization_pending', [] as number[]],
    [0.001, 2.5, 'authorization_pending', [1000, 2000]],
    ['fast', 2.5, 'authorization_pending', []],
    [1, 1.5, 'slow_down', [1000]],
    [1, 20, 'slow_down', [1000, 7000, 18000]]
  ] as const) {
    const clock = new FakeClock({ auto: true })
    const begun = clock.now()
    const polls: number[] = []
    const idp = await provider(t, standard, {
      '/device/auth': () => ({ body: { device_code: 'dc-Timer-Code-1187', user_code: 'TIME-R', verification_uri: 'http://127.0.0.1:1/device', expires_in: expiresIn, interval } }),
      '/token': () => { polls.push(clock.now() - begun); return { status: 400, body: { error: answer } } }
    })
    const config = loadConfig({ env: { ...envOf(idp.url), BEARER_PROXY_GRANT: 'login' }, envFile: '/dev/null', forwarding: false })
    const dispatcher = createDispatcher(config, pino({ level: 'silent' }))
    t.teardown(async () => await dispatcher.close())
    const said: string[] = []
    await t.rejects(loginWithDevice(config, dispatcher, { say: (line) => said.push(line), open: () => {} }, clock), { message: /the code expired before the login was approved/ }, `interval ${interval}, ${answer}`)
    t.same(polls, polled, 'never more than one poll a second, 5 s more after each slow_down, none after the code expires')
    t.equal(clock.now() - begun, expiresIn * 1000, 'the login ended when the code expired, not at the interval')
    printed.push(...said)
  }
  secrets.push('dc-Timer-Code-1187')
})
