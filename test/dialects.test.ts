import t, { type Test } from 'tap'
import { request } from 'undici'
import { APIC, type Emulator, RUNAI, type RunaiOptions, startApiConnect as startApic, startRunai as startRunaiEmulator } from './helpers/emulators.js'
import { assertNoSecret, fragments } from './helpers/secrets.js'
import { runCli, startTestProxy, startTokenManager, afterFetch } from './helpers/stack.js'

const startRunai = async (t: Test, options: RunaiOptions = {}): Promise<Emulator> => remember(await startRunaiEmulator(t, options))
const startApiConnect = async (t: Test, options: { expiresIn?: number | undefined }): Promise<Emulator> => remember(await startApic(t, options))
function remember (emulator: Emulator): Emulator {
  emulators.push(emulator)
  return emulator
}

const runaiEnv = (runai: Emulator, extra: Record<string, string>): Record<string, string> => ({
  BEARER_PROXY_AUTH: 'runai', BEARER_PROXY_UPSTREAM: runai.url, BEARER_PROXY_PORT: '0', BEARER_PROXY_LOG_LEVEL: 'trace', ...extra
})
const clientCredentials = { BEARER_PROXY_CLIENT_ID: RUNAI.client.id, BEARER_PROXY_CLIENT_SECRET: RUNAI.client.secret }
const apicEnv = (apic: Emulator, extra: Record<string, string> = {}): Record<string, string> => ({
  BEARER_PROXY_AUTH: 'apiconnect', BEARER_PROXY_UPSTREAM: apic.url, BEARER_PROXY_PORT: '0', BEARER_PROXY_LOG_LEVEL: 'trace',
  BEARER_PROXY_REALM: APIC.realm, BEARER_PROXY_USERNAME: APIC.user.username, BEARER_PROXY_PASSWORD: APIC.user.password,
  BEARER_PROXY_CLIENT_ID: APIC.client.id, BEARER_PROXY_CLIENT_SECRET: APIC.client.secret, ...extra
})
const ALL_SECRETS = [RUNAI.client.secret, RUNAI.user.password, RUNAI.app.secret, APIC.user.password, APIC.apiKey, APIC.client.secret]
const emulators: Emulator[] = []

/** Configured secrets, and every token the emulators issued (whole, and a JWT's payload and signature parts). */
function assertNoSecretIn (t: Test, text: string, extra: string[] = []): void {
  assertNoSecret(t, 'the output', text, fragments([...ALL_SECRETS, ...extra, ...emulators.flatMap((emulator) => emulator.issued)]))
}

t.test('Run:ai (a v1-only control plane) client_credentials: control plane at /, researcher APIs at /clusters/<name>/, one token', async (t) => {
  const runai = await startRunai(t, { generation: 'v1' })
  // The researcher APIs accept the control plane's tokens: here the emulator serves them too.
  const { url, logs } = await startTestProxy(t, runaiEnv(runai, { ...clientCredentials, BEARER_PROXY_CLUSTERS: `gpu-a=${runai.url}/researcher,gpu-b=${runai.url}` }))
  for (const path of ['/api/v1/projects', '/clusters/gpu-a/api/v1/jobs', '/clusters/gpu-b/api/v1/workloads']) {
    const response = await request(`${url}${path}`)
    t.equal(response.statusCode, 200, path)
    await response.body.dump()
  }
  t.same(runai.served, ['/api/v1/projects', '/researcher/api/v1/jobs', '/api/v1/workloads'])
  t.same(runai.calls, [{ path: '/api/v1/token', contentType: 'application/json', body: { grantType: 'client_credentials', clientID: RUNAI.client.id, clientSecret: RUNAI.client.secret } }])
  t.same(runai.absent, ['/api/v2/token'], '/api/v2/token asked once, then v1')
  assertNoSecretIn(t, logs.text)
})

t.test('Run:ai v1 password, refresh_token and app_token grants send the fields of the 2.22 OpenAPI', async (t) => {
  const runai = await startRunai(t, { generation: 'v1' })
  const password = startTokenManager(t, runaiEnv(runai, { BEARER_PROXY_GRANT: 'password', BEARER_PROXY_USERNAME: RUNAI.user.username, BEARER_PROXY_PASSWORD: RUNAI.user.password }))
  t.equal((await password.tokens.get()).subject, RUNAI.user.username)
  t.same(runai.calls[0]?.body, { grantType: 'password', username: RUNAI.user.username, password: RUNAI.user.password })

  const issued = (await request(`${runai.url}/api/v1/token`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ grantType: 'client_credentials', clientID: RUNAI.client.id, clientSecret: RUNAI.client.secret })
  }).then(async (response) => await response.body.json())) as { refreshToken: string }
  const refresh = startTokenManager(t, runaiEnv(runai, { BEARER_PROXY_GRANT: 'refresh_token', BEARER_PROXY_REFRESH_TOKEN: issued.refreshToken }))
  t.equal((await refresh.tokens.get()).subject, 'refreshed')
  t.same(runai.calls.at(-1)?.body, { grantType: 'refresh_token', refreshToken: issued.refreshToken })

  const app = startTokenManager(t, runaiEnv(runai, { ...clientCredentials, BEARER_PROXY_GRANT: 'app_token' }))
  t.equal((await app.tokens.get()).subject, RUNAI.client.id)
  t.same(runai.calls.at(-1)?.body, { grantType: 'app_token', appID: RUNAI.client.id, appSecret: RUNAI.client.secret })
  assertNoSecretIn(t, password.logs.text + refresh.logs.text + app.logs.text, [issued.refreshToken])
})

t.test('Run:ai v1: expiry from the JWT exp, renewal with the refreshToken, fallback when it is refused', async (t) => {
  const runai = await startRunai(t, { generation: 'v1' })
  runai.ttl = 3
  const { tokens, logs } = startTokenManager(t, runaiEnv(runai, clientCredentials))
  const first = await tokens.get()
  const left = first.expiresAt - Date.now()
  t.ok(left <= 3000 && left > 500, `a 3 s token, from its exp (${left} ms left)`)
  tokens.start()
  await afterFetch(tokens, () => logs.events('token_renewed').length >= 1, 5000, 'renewal before expiry')
  t.equal(logs.events('token_renewed')[0]?.grant, 'refresh_token')
  t.match(runai.calls[1]?.body, { grantType: 'refresh_token', refreshToken: /^runai-refresh-1/ })
  t.ok(Date.now() < first.expiresAt, 'renewed in time')

  runai.refuseRefresh = true
  await afterFetch(tokens, () => logs.events('token_renewed').length >= 2, 5000, 'a second renewal')
  t.same(runai.calls.slice(2).map((call) => call.body.grantType), ['refresh_token', 'client_credentials'], 'refused refresh, then the configured grant')
  t.match(logs.events('token_refresh_failed')[0], { error: /answered 401 invalid credentials/ })
  t.same(logs.events('token_failed'), [])
})

t.test('Run:ai wrong credentials: 503 naming code and message, never the secret', async (t) => {
  const runai = await startRunai(t)
  const { url, logs } = await startTestProxy(t, runaiEnv(runai, { ...clientCredentials, BEARER_PROXY_CLIENT_SECRET: 'Wrong-Runai-Secret-1' }))
  const response = await request(`${url}/api/v1/clusters`)
  t.equal(response.statusCode, 503)
  const body = await response.body.json() as { message: string }
  t.match(body.message, new RegExp(`token endpoint ${runai.url}/api/v2/token answered 401 invalid credentials`))
  assertNoSecretIn(t, logs.text + JSON.stringify(body), ['Wrong-Runai-Secret-1'])
})

t.test('runai-apptoken: {id, name, secret} to the deprecated endpoint; name from APP_NAME, else CLIENT_ID', async (t) => {
  const runai = await startRunai(t)
  const base = { BEARER_PROXY_AUTH: 'runai-apptoken', BEARER_PROXY_CLIENT_ID: RUNAI.app.id, BEARER_PROXY_CLIENT_SECRET: RUNAI.app.secret, BEARER_PROXY_LOG_LEVEL: 'trace' }
  const named = startTokenManager(t, { ...base, BEARER_PROXY_UPSTREAM: runai.url, BEARER_PROXY_APP_NAME: RUNAI.app.name })
  t.equal((await named.tokens.get()).subject, RUNAI.app.name)
  t.same(runai.calls[0], { path: '/v1/k8s/auth/oauth/apptoken', contentType: 'application/json', body: { id: RUNAI.app.id, name: RUNAI.app.name, secret: RUNAI.app.secret } })
  const unnamed = startTokenManager(t, { ...base, BEARER_PROXY_UPSTREAM: runai.url })
  await unnamed.tokens.get()
  t.equal(runai.calls[1]?.body.name, RUNAI.app.id)
  assertNoSecretIn(t, named.logs.text + unnamed.logs.text)
})

t.test('API Connect password grant: the body of the IBM sample; the JWT exp, earlier than expires_in, counts', async (t) => {
  const apic = await startApiConnect(t, { expiresIn: 100 })
  const { url, proxy, logs } = await startTestProxy(t, apicEnv(apic))
  const response = await request(`${url}/api/orgs`)
  t.equal(response.statusCode, 200)
  await response.body.dump()
  t.same(apic.calls[0]?.body, {
    username: APIC.user.username, password: APIC.user.password, realm: APIC.realm,
    client_id: APIC.client.id, client_secret: APIC.client.secret, grant_type: 'password'
  })
  const token = proxy.tokens.current()
  const lifetime = (token?.expiresAt ?? 0) - (token?.obtainedAt ?? 0)
  t.ok(lifetime <= 60_000 && lifetime > 57_000, `lifetime from the JWT, 60 s (expires_in says 100 s): ${lifetime} ms`)
  assertNoSecretIn(t, logs.text)
})

t.test('API Connect without expires_in uses the JWT exp; the api_key grant', async (t) => {
  const apic = await startApiConnect(t, { expiresIn: undefined })
  apic.ttl = 45
  const { tokens, logs } = startTokenManager(t, apicEnv(apic, {
    BEARER_PROXY_GRANT: 'api_key', BEARER_PROXY_API_KEY: APIC.apiKey, BEARER_PROXY_USERNAME: '', BEARER_PROXY_PASSWORD: ''
  }))
  const token = await tokens.get()
  const left = token.expiresAt - Date.now()
  t.ok(left <= 45_000 && left > 42_000, `45 s from the JWT's exp (${left} ms left)`)
  t.same(apic.calls[0]?.body, { api_key: APIC.apiKey, grant_type: 'api_key', realm: APIC.realm, client_id: APIC.client.id, client_secret: APIC.client.secret })
  assertNoSecretIn(t, logs.text)
})

t.test('API Connect wrong realm: /-/ready 503 and 503 token_unavailable naming the answer, never the password', async (t) => {
  const apic = await startApiConnect(t, { expiresIn: 100 })
  const { url, logs } = await startTestProxy(t, apicEnv(apic, { BEARER_PROXY_REALM: 'provider/wrong-idp' }))
  const ready = await request(`${url}/-/ready`)
  t.equal(ready.statusCode, 503)
  const readyBody = await ready.body.text()
  const response = await request(`${url}/api/orgs`)
  t.equal(response.statusCode, 503)
  const body = await response.body.json() as { error: string, message: string }
  t.equal(body.error, 'token_unavailable')
  t.match(body.message, /answered 401 Invalid username or password for realm/)
  assertNoSecretIn(t, logs.text + readyBody + JSON.stringify(body))
})

t.test('check and token work with every dialect', async (t) => {
  const runai = await startRunai(t)
  const apic = await startApiConnect(t, { expiresIn: 100 })
  const cases: Array<[string, Record<string, string>]> = [
    ['runai', { BEARER_PROXY_AUTH: 'runai', BEARER_PROXY_UPSTREAM: runai.url, ...clientCredentials }],
    ['runai-apptoken', { BEARER_PROXY_AUTH: 'runai-apptoken', BEARER_PROXY_UPSTREAM: runai.url, BEARER_PROXY_CLIENT_ID: RUNAI.app.id, BEARER_PROXY_CLIENT_SECRET: RUNAI.app.secret }],
    ['apiconnect', { ...apicEnv(apic), BEARER_PROXY_LOG_LEVEL: 'info', BEARER_PROXY_PORT: '8080' }]
  ]
  for (const [name, env] of cases) {
    const check = await runCli(['check'], env)
    t.equal(check.code, 0, `${name}: check ${check.stderr}`)
    t.match(check.stdout, /subject: \S+/)
    const token = await runCli(['token'], env)
    t.equal(token.code, 0, `${name}: token`)
    t.match(token.stdout, /^ey[\w-]+\.[\w-]+\.[\w-]+\n$/)
    assertNoSecretIn(t, check.stdout + check.stderr + token.stderr)
  }
})
