import t from 'tap'
import { request } from 'undici'
import { RUNAI, runaiEnv, startRunai } from './helpers/emulators.js'
import { assertNoSecret, fragments } from './helpers/secrets.js'
import { afterFetch, runCli, startTestProxy, startTokenManager } from './helpers/stack.js'

const env = runaiEnv
const SECRETS = [RUNAI.client.secret, RUNAI.user.password]

t.test('AUTH=runai asks /api/v2/token first: the OAuth 2.0 form of the docs, expires_in honoured', async (t) => {
  const runai = await startRunai(t, { expiresIn: 20 })
  runai.ttl = 600
  const { url, proxy, logs } = await startTestProxy(t, env(runai))
  const answer = await request(`${url}/api/v1/projects`)
  t.equal(answer.statusCode, 200)
  await answer.body.dump()
  t.same(runai.calls, [{
    path: '/api/v2/token',
    contentType: 'application/x-www-form-urlencoded',
    body: { grant_type: 'client_credentials', client_id: RUNAI.client.id, client_secret: RUNAI.client.secret }
  }])
  const left = (proxy.tokens.status().expiresAt ?? 0) - Date.now()
  t.ok(left <= 20_000 && left > 10_000, `expires_in 20 wins over a 600 s exp (${left} ms left)`)
  t.match(logs.events('token_endpoint_chosen'), [{ endpoint: `${runai.url}/api/v2/token` }])
  assertNoSecret(t, 'the log', logs.text, fragments([...SECRETS, ...runai.issued]))

  const password = startTokenManager(t, env(runai, { BEARER_PROXY_GRANT: 'password', BEARER_PROXY_CLIENT_ID: '', BEARER_PROXY_CLIENT_SECRET: '', BEARER_PROXY_USERNAME: RUNAI.user.username, BEARER_PROXY_PASSWORD: RUNAI.user.password }))
  t.equal((await password.tokens.get()).subject, RUNAI.user.username)
  t.same(runai.calls.at(-1)?.body, { grant_type: 'password', username: RUNAI.user.username, password: RUNAI.user.password }, 'a local user, no client')
})

t.test('a control plane without /api/v2/token (404 or 405): /api/v1/token, chosen once for the process', async (t) => {
  for (const absentStatus of [404, 405] as const) {
    const runai = await startRunai(t, { generation: 'v1', absentStatus })
    runai.ttl = 2
    const { tokens, logs } = startTokenManager(t, env(runai), { backoffMs: 50 })
    await tokens.get()
    tokens.start()
    await afterFetch(tokens, () => logs.events('token_renewed').length >= 2, 8000, 'two renewals')
    t.same(runai.absent, ['/api/v2/token'], `${absentStatus}: v2 asked once`)
    t.same(runai.calls.map((call) => `${call.path} ${call.body.grantType as string}`),
      ['/api/v1/token client_credentials', '/api/v1/token refresh_token', '/api/v1/token refresh_token'], 'then v1 only, with its refresh token')
    t.match(logs.events('token_endpoint_chosen'), [{ endpoint: `${runai.url}/api/v1/token` }])
  }
})

t.test('RUNAI_TOKEN_API pins the generation; TOKEN_URL picks it by its path; app_token is v1 only', async (t) => {
  const modern = await startRunai(t)
  const pinned = startTokenManager(t, env(modern, { BEARER_PROXY_RUNAI_TOKEN_API: 'v1' }))
  await pinned.tokens.get()
  t.same(modern.calls.map((call) => call.path), ['/api/v1/token'], 'v1 although v2 exists')

  const old = await startRunai(t, { generation: 'v1' })
  const wrong = await startTestProxy(t, env(old, { BEARER_PROXY_RUNAI_TOKEN_API: 'v2' }), { backoffMs: 60_000 })
  const refused = await request(`${wrong.url}/api/v1/projects`)
  t.equal(refused.statusCode, 503)
  t.match(await refused.body.json(), { error: 'token_unavailable', message: `token endpoint ${old.url}/api/v2/token answered 404` })
  t.same(old.calls, [], 'pinned: no fallback')

  const byPath = startTokenManager(t, env(modern, { BEARER_PROXY_UPSTREAM: '', BEARER_PROXY_TOKEN_URL: `${modern.url}/api/v2/token` }))
  await byPath.tokens.get()
  t.equal(modern.calls.at(-1)?.contentType, 'application/x-www-form-urlencoded', 'TOKEN_URL …/api/v2/token: the form')
  const v1Path = startTokenManager(t, env(modern, { BEARER_PROXY_UPSTREAM: '', BEARER_PROXY_TOKEN_URL: `${modern.url}/api/v1/token` }))
  await v1Path.tokens.get()
  t.equal(modern.calls.at(-1)?.contentType, 'application/json', 'TOKEN_URL …/api/v1/token: JSON')

  const calls = modern.calls.length
  const app = startTokenManager(t, env(modern, { BEARER_PROXY_GRANT: 'app_token' }))
  await app.tokens.get()
  t.same(modern.calls.slice(calls).map((call) => `${call.path} ${call.body.grantType as string}`), ['/api/v1/token app_token'])

  const both = await runCli(['check'], env(modern, { BEARER_PROXY_GRANT: 'app_token', BEARER_PROXY_RUNAI_TOKEN_API: 'v2' }))
  t.equal(both.code, 2)
  t.match(both.stderr, /BEARER_PROXY_RUNAI_TOKEN_API: does nothing with AUTH=runai GRANT=app_token/)
})

t.test('wrong credentials at /api/v2/token: a 503 naming its answer, no fallback to v1, never a secret', async (t) => {
  const runai = await startRunai(t)
  const { url, logs } = await startTestProxy(t, env(runai, { BEARER_PROXY_CLIENT_SECRET: 'Wrong-Runai-Secret-2' }), { backoffMs: 60_000 })
  const answer = await request(`${url}/api/v1/projects`)
  t.equal(answer.statusCode, 503)
  const body = await answer.body.json() as { message: string }
  t.equal(body.message, `token endpoint ${runai.url}/api/v2/token answered 401 invalid credentials`)
  t.same(runai.calls.map((call) => call.path), ['/api/v2/token'], 'a refusal is the answer: v1 is not asked')
  const ready = await (await request(`${url}/-/ready`)).body.text()
  assertNoSecret(t, 'output', logs.text + JSON.stringify(body) + ready, fragments(['Wrong-Runai-Secret-2', ...SECRETS]))
})

t.test('no token endpoint at all (UPSTREAM is not a control plane): one message naming both', async (t) => {
  const { startTokenEndpoint } = await import('./helpers/token-endpoint.js')
  const other = await startTokenEndpoint(t, () => ({ status: 404, body: { message: 'no such page' } }))
  const result = await runCli(['check'], { BEARER_PROXY_AUTH: 'runai', BEARER_PROXY_UPSTREAM: other.url, BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's' })
  t.equal(result.code, 1)
  t.equal(result.stderr, `bearer-proxy: no token endpoint answered: ${other.url}/api/v2/token and ${other.url}/api/v1/token answered 404 or 405; is BEARER_PROXY_UPSTREAM the control plane's URL?\n`)
})
