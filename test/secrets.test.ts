import t, { type Test } from 'tap'
import { request } from 'undici'
import { type EventEmitter, once } from 'node:events'
import { RUNAI, runaiEnv, startRunai, startRunaiWithRealm } from './helpers/emulators.js'
import { createLogger } from '../src/log.js'
import { startTracing, tracingSettings } from '../src/tracing.js'
import { startCollector } from './helpers/otlp.js'
import { LogCapture, baseEnv, bounded, runCli, startApiOf, startIdentity, startTestProxy, USER, CLIENT, afterFetch } from './helpers/stack.js'
import { assertNoSecret, fragments } from './helpers/secrets.js'
import { jwt, startTokenEndpoint } from './helpers/token-endpoint.js'

t.test('at trace level, through every path, no secret or token reaches the logs, error bodies, /-/ready or a span', async (t) => {
  // Every proxy of this test traced, every request sampled: the spans are scanned too.
  const collector = await startCollector(t)
  const traces = tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_BSP_SCHEDULE_DELAY: '20' })
  if (traces === undefined) throw new Error('tracing is off')
  const tracing = await startTracing(traces, createLogger('trace', new LogCapture()), 'test')
  t.teardown(async () => await tracing.close(1000))
  const idp = await startIdentity(t, { accessTokenTtl: 2 })
  const api = await startApiOf(t, idp)
  api.routes.set('/cookies', (req, res) => {
    res.writeHead(200, { 'set-cookie': 'session=SetCookieValue-9876; HttpOnly' }).end(`got ${req.headers.cookie?.length ?? 0}`)
  })
  api.routes.set('/reject', (_req, res) => { res.writeHead(401).end() })
  const bodies: string[] = []
  // The proxy's own answers are kept; upstream answers (this echo API repeats the token) pass through by design.
  const keep = async (response: Awaited<ReturnType<typeof request>>): Promise<void> => { bodies.push(await response.body.text()) }
  const pass = async (response: Awaited<ReturnType<typeof request>>): Promise<void> => { await response.body.dump() }

  // Password grant with refresh tokens, renewals, a revoked token and a retry, cookies, upstream errors.
  const { url, proxy, logs } = await startTestProxy(t, {
    ...baseEnv(idp, api),
    BEARER_PROXY_GRANT: 'password',
    BEARER_PROXY_USERNAME: USER.username,
    BEARER_PROXY_PASSWORD: USER.password,
    BEARER_PROXY_LOG_LEVEL: 'trace',
    BEARER_PROXY_CLUSTERS: 'dead=http://127.0.0.1:1',
    BEARER_PROXY_INBOUND_KEY: 'Inbound-Key-Value-2468'
  }, { tracing })
  const key = { 'proxy-authorization': 'Bearer Inbound-Key-Value-2468' }
  await keep(await request(`${url}/-/ready`))
  await pass(await request(`${url}/first`, { headers: { ...key, authorization: 'Bearer ClientSideToken-5555', cookie: 'session=CookieValue-1234' } }))
  await keep(await request(`${url}/no-key`, { headers: { 'proxy-authorization': 'Bearer Wrong-Inbound-Key-1357' } }))
  api.revoked.add(api.seen[0]?.jti as string)
  await pass(await request(`${url}/after-revoke?access_token=QueryToken-1122`, { method: 'POST', body: 'x=1', headers: key }))
  await pass(await request(`${url}/cookies`, { headers: { ...key, cookie: 'session=CookieValue-1234' } }))
  await pass(await request(`${url}/reject`, { headers: key }))
  await keep(await request(`${url}/clusters/dead/x`, { headers: key }))
  await keep(await request(`${url}/clusters/nope/x`, { headers: key }))
  await afterFetch(proxy.tokens, () => logs.events('token_renewed').length >= 1, 5000, 'a renewal with the refresh token')
  await keep(await request(`${url}/-/ready`))
  await keep(await request(`${url}/-/metrics`, { headers: key }))

  // Bad credentials.
  const bad = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_CLIENT_SECRET: 'WrongSecret-4321', BEARER_PROXY_LOG_LEVEL: 'trace' }, { tracing })
  await keep(await request(`${bad.url}/x`))
  await keep(await request(`${bad.url}/-/ready`))

  // An endpoint that echoes the secret back in its error, and one that returns known refresh and id tokens.
  const echoing = await startTokenEndpoint(t, (call) => ({ status: 400, body: { error: 'invalid_request', error_description: `bad ${String(call.fields.client_secret)}` } }))
  const echo = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_TOKEN_URL: `${echoing.url}/token`, BEARER_PROXY_LOG_LEVEL: 'trace' }, { tracing })
  await keep(await request(`${echo.url}/x`))
  const idToken = await jwt(60, { sub: 'id' })
  const known = await startTokenEndpoint(t, () => ({ body: { access_token: 'OpaqueAccess-777777', refresh_token: 'KnownRefresh-888888', id_token: idToken, expires_in: 1 } }))
  const knownProxy = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_TOKEN_URL: `${known.url}/token`, BEARER_PROXY_LOG_LEVEL: 'trace' }, { tracing })
  await afterFetch(knownProxy.proxy.tokens, () => known.calls.length >= 2, 5000, 'a refresh')
  await pass(await request(`${knownProxy.url}/x`))

  // The CLI's check and token commands at trace level (token prints the token on stdout only).
  const cliEnv = { BEARER_PROXY_TOKEN_URL: idp.tokenUrl, BEARER_PROXY_CLIENT_ID: CLIENT.clientId, BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret, BEARER_PROXY_LOG_LEVEL: 'trace' }
  const check = await runCli(['check'], cliEnv)
  const token = await runCli(['token'], cliEnv)
  const badCheck = await runCli(['check'], { ...cliEnv, BEARER_PROXY_CLIENT_SECRET: 'WrongSecret-4321' })

  // Run:ai: /api/v2/token, clusters discovered from a list with credentials in a domain, the clusters command.
  const runai = await startRunai(t)
  runai.clusters = [
    { uuid: '0b9f7a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b', name: 'gpu-a', domain: `${runai.url}/a` },
    { uuid: '1c0a8b5f-2d3e-4f60-9b0c-1d2e3f4a5b6c', name: 'leaky', domain: 'https://user:DomainPass-3141@gpu.example' }
  ]
  const discovered = await startTestProxy(t, runaiEnv(runai), { tracing })
  await bounded(once(discovered.proxy.discovery as EventEmitter, 'change'), 5000, 'the cluster list')
  await pass(await request(`${discovered.url}/clusters/gpu-a/x`))
  await keep(await request(`${discovered.url}/clusters/leaky/x`))
  await keep(await request(`${discovered.url}/-/ready`))
  const clusters = await runCli(['clusters'], runaiEnv(runai))

  const accessTokens = api.seen.map((seen) => (seen.headers.authorization ?? '').replace(/^Bearer /, ''))
  const secrets = fragments([
    CLIENT.clientSecret, USER.password, 'WrongSecret-4321', 'Inbound-Key-Value-2468', 'Wrong-Inbound-Key-1357', 'QueryToken-1122', 'ClientSideToken-5555', 'CookieValue-1234', 'SetCookieValue-9876',
    'OpaqueAccess-777777', 'KnownRefresh-888888', idToken, token.stdout.trim(), ...accessTokens,
    ...known.calls.map((call) => String(call.fields.refresh_token ?? '')).filter(Boolean),
    RUNAI.client.secret, 'DomainPass-3141', ...runai.issued
  ])
  t.ok(accessTokens.length >= 5, 'real tokens were used')
  const logText = [logs.text, bad.logs.text, echo.logs.text, knownProxy.logs.text, discovered.logs.text].join('\n')
  t.match(discovered.logs.text, /"event":"cluster_skipped","cluster":"leaky"/, 'the discovery path ran')
  t.ok(logText.split('\n').length > 50, 'trace produced plenty of output')
  t.match(logText, /"level":10/, 'trace lines are there')
  assertNoSecret(t, 'proxy logs', logText, secrets)
  t.ok(bodies.some((body) => body.includes('bearer_proxy_requests_total')), 'the metrics were scanned')
  assertNoSecret(t, 'error bodies, /-/ready and /-/metrics', bodies.join('\n'), secrets)
  assertNoSecret(t, 'check output', check.stdout + check.stderr + badCheck.stdout + badCheck.stderr, secrets)
  assertNoSecret(t, 'token stderr', token.stderr, secrets)
  assertNoSecret(t, 'clusters output', clusters.stdout + clusters.stderr, secrets)
  await tracing.close(5000)
  t.ok(collector.spans.some((span) => span.name === 'cluster list') && collector.spans.some((span) => span.name === 'token request' && span.status.code === 2), 'every kind of span was exported')
  assertNoSecret(t, 'exported spans, as sent', collector.bodies.map((body) => body.text).join('\n'), secrets)
  assertNoSecret(t, 'exported spans, decoded', JSON.stringify(collector.spans, (_key, value: unknown) => typeof value === 'bigint' ? String(value) : value), secrets)
  t.equal(clusters.code, 0)
  t.match(echo.logs.text, /bad \[redacted\]/, 'a secret echoed by the endpoint is scrubbed')
  t.equal(check.code, 0)
  t.equal(badCheck.code, 1)
  // Still renewing its 2 s tokens: a valid one is at hand (current() may be between two renewals on a slow machine).
  t.ok(await bounded(proxy.tokens.get(), 5000, 'a token'))
})

t.test('the logger replaces any field named like a credential, at any depth, and Secret values print [redacted]', async (t) => {
  const { LogCapture } = await import('./helpers/stack.js')
  const { createLogger } = await import('../src/log.js')
  const { Secret } = await import('../src/secret.js')
  const capture = new LogCapture()
  const log = createLogger('trace', capture)
  log.info({
    headers: { authorization: 'Bearer AuthValue-1', cookie: 'CookieValue-2', 'set-cookie': ['SetCookieValue-3'], accept: 'json' },
    nested: { client_secret: 'SecretValue-4', deeper: { refresh_token: 'RefreshValue-5', apiKey: 'KeyValue-6' } },
    list: [{ password: 'PasswordValue-7' }],
    wrapped: new Secret('WrappedValue-8'),
    proxyAuthorization: 'ProxyValue-9'
  }, 'a line with credentials in it')
  log.child({ reqId: 'r1' }).warn({ accessToken: 'TokenValue-10' }, 'child line')
  for (let i = 1; i <= 10; i++) t.notMatch(capture.text, new RegExp(`Value-${i}\\b`), `value ${i}`)
  t.match(capture.text, /"accept":"json"/, 'other fields are kept')
  t.match(capture.text, /"wrapped":"\[redacted\]"/)
})

t.test('signed client assertions at trace: no private key, assertion or HMAC secret in the logs, answers or metrics', async (t) => {
  const { generateKeyPairSync } = await import('node:crypto')
  const { mkdtempSync, writeFileSync } = await import('node:fs')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const publicJwk = { ...pair.publicKey.export({ format: 'jwk' }), kid: 'scan-1' }
  const privateJwk = { ...pair.privateKey.export({ format: 'jwk' }), kid: 'scan-1' } as Record<string, string>
  const stranger = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' }) as string
  const hmac = 'Hmac-Client-Secret-5150-long-enough-for-HS256'
  const idp = await startIdentity(t, {
    accessTokenTtl: 600,
    clients: [{ clientId: 'signer', authMethod: 'private_key_jwt', jwks: { keys: [publicJwk] } }, { clientId: 'hmac', clientSecret: hmac, authMethod: 'client_secret_jwt' }]
  })
  const api = await startApiOf(t, idp)
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-scan-'))
  writeFileSync(join(dir, 'key.jwk'), JSON.stringify(privateJwk))
  writeFileSync(join(dir, 'stranger.pem'), stranger)
  const env = (extra: Record<string, string>): Record<string, string> => ({
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl, BEARER_PROXY_UPSTREAM: api.url, BEARER_PROXY_PORT: '0', BEARER_PROXY_LOG_LEVEL: 'trace', ...extra
  })
  const bodies: string[] = []
  const proxies = await Promise.all(([
    { BEARER_PROXY_CLIENT_ID: 'signer', BEARER_PROXY_CLIENT_AUTH: 'private_key_jwt', BEARER_PROXY_CLIENT_KEY_FILE: join(dir, 'key.jwk') },
    { BEARER_PROXY_CLIENT_ID: 'signer', BEARER_PROXY_CLIENT_AUTH: 'private_key_jwt', BEARER_PROXY_CLIENT_KEY_FILE: join(dir, 'stranger.pem') },
    { BEARER_PROXY_CLIENT_ID: 'hmac', BEARER_PROXY_CLIENT_AUTH: 'client_secret_jwt', BEARER_PROXY_CLIENT_SECRET: hmac }
  ] as Array<Record<string, string>>).map(async (extra) => await startTestProxy(t, env(extra), { backoffMs: 60_000 })))
  for (const [index, { url }] of proxies.entries()) {
    // The echo API repeats the token it got: only the refused proxy's answer to /x is its own.
    const answer = await request(`${url}/x`)
    if (index === 1) bodies.push(await answer.body.text())
    else t.equal(answer.statusCode, 200, (await answer.body.dump(), 'a token was obtained'))
    for (const path of ['/-/ready', '/-/metrics']) bodies.push(await (await request(`${url}${path}`)).body.text())
  }
  const check = await runCli(['check'], env({ BEARER_PROXY_CLIENT_ID: 'signer', BEARER_PROXY_CLIENT_AUTH: 'private_key_jwt', BEARER_PROXY_CLIENT_KEY_FILE: join(dir, 'stranger.pem') }))
  t.equal(check.code, 1)
  t.ok(idp.assertions.length >= 3, 'assertions were sent')
  const secrets = fragments([
    ...idp.assertions.map(({ assertion }) => assertion), privateJwk.d as string, hmac,
    ...stranger.split('\n').filter((line) => line.length > 40),
    ...api.seen.map((seen) => (seen.headers.authorization ?? '').replace(/^Bearer /, ''))
  ])
  const logText = proxies.map(({ logs }) => logs.text).join('\n')
  t.match(logText, /"level":10/, 'trace lines are there')
  assertNoSecret(t, 'proxy logs', logText, secrets)
  assertNoSecret(t, 'answers, /-/ready and /-/metrics', bodies.join('\n'), secrets)
  assertNoSecret(t, 'check output', check.stdout + check.stderr, secrets)
})

t.test('a person\'s login at trace: no code, refresh or access token in the output of login, serve, check, logout, error bodies or metrics', async (t) => {
  const { mkdtempSync } = await import('node:fs')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const store = (): string => join(mkdtempSync(join(tmpdir(), 'bearer-proxy-scan-login-')), 'logins.json')
  t.test('at an OpenID Connect provider, with PKCE', async (t) => {
    const idp = await startIdentity(t, { accessTokenTtl: 600, interactive: true, clients: [{ clientId: 'cli', authMethod: 'none', native: true }] })
    const api = await startApiOf(t, idp)
    const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: store(), BEARER_PROXY_UPSTREAM: api.url }
    await scanLogin(t, env, () => api.seen.map((seen) => (seen.headers.authorization ?? '').replace(/^Bearer /, '')), [])
  })
  t.test('at Run:ai, its token API exchanging the code', async (t) => {
    const cli = { id: 'runai-cli', secret: 'runai-Cli-Backend-Secret-8820' }
    const { runai } = await startRunaiWithRealm(t, 'tenant', cli)
    const env = { BEARER_PROXY_AUTH: 'runai', BEARER_PROXY_UPSTREAM: runai.url, BEARER_PROXY_REALM: 'tenant', BEARER_PROXY_CLIENT_ID: cli.id, BEARER_PROXY_TOKEN_STORE: store() }
    await scanLogin(t, env, () => runai.issued, [cli.secret])
  })
})

/** login, serve, check and logout at trace, then the store emptied under the proxy: none of their output or answers carries a secret. */
async function scanLogin (t: Test, settings: Record<string, string>, tokensSent: () => string[], secretsBesides: string[]): Promise<void> {
  const { readFileSync } = await import('node:fs')
  const { returnTo, signIn } = await import('./helpers/browser.js')
  const { cleanDirectory, collect, spawnCli, waitForLine } = await import('./helpers/stack.js')
  const env: Record<string, string> = { ...settings, BEARER_PROXY_LOG_LEVEL: 'trace' }
  const stored = (): string[] => Object.values((JSON.parse(readFileSync(env.BEARER_PROXY_TOKEN_STORE as string, 'utf8')) as { logins: Record<string, { refreshToken: string }> }).logins)
    .map(({ refreshToken }) => refreshToken)
  const login = spawnCli(['login'], env, cleanDirectory())
  t.teardown(() => { login.kill('SIGKILL') })
  const loginOutput = collect(login)
  const url = (await waitForLine(login, /^\s+http/, 10_000, 'stderr')).trim()
  const back = await signIn(url)
  await returnTo(back)
  await once(login, 'exit')
  const refreshTokens = stored()
  const bodies: string[] = []
  const { url: proxy, proxy: running, logs } = await startTestProxy(t, { ...env, BEARER_PROXY_PORT: '0' }, { backoffMs: 60_000 })
  await (await request(`${proxy}/x`)).body.dump()
  refreshTokens.push(...stored())
  const check = await runCli(['check'], env)
  refreshTokens.push(...stored())
  const logout = await runCli(['logout'], env)
  running.tokens.drop(running.tokens.current() as NonNullable<ReturnType<typeof running.tokens.current>>)
  bodies.push(await (await request(`${proxy}/x`)).body.text(), await (await request(`${proxy}/-/ready`)).body.text(), await (await request(`${proxy}/-/metrics`)).body.text())
  const secrets = fragments([new URL(back).searchParams.get('code') ?? '', ...refreshTokens, ...tokensSent(), ...secretsBesides].filter((value) => value.length > 8))
  t.ok(refreshTokens.length >= 3 && tokensSent().length >= 1, 'a login, renewals and a request were made')
  t.match(bodies[0], /run bearer-proxy login again|no login is stored/, 'the proxy said what to do once the login was gone')
  assertNoSecret(t, 'login output', loginOutput().stdout + loginOutput().stderr, secrets)
  assertNoSecret(t, 'proxy logs', logs.text, secrets)
  assertNoSecret(t, 'check and logout output', check.stdout + check.stderr + logout.stdout + logout.stderr, secrets)
  assertNoSecret(t, 'error bodies, /-/ready and /-/metrics', bodies.join('\n'), secrets)
}
