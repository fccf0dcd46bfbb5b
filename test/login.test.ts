import { once } from 'node:events'
import { mkdtempSync, readFileSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { decodeJwt } from 'jose'
import t from 'tap'
import { request } from 'undici'
import { approveDevice, returnTo, signIn, startLogin } from './helpers/browser.js'
import { startRunaiWithRealm } from './helpers/emulators.js'
import { startTokenEndpoint } from './helpers/token-endpoint.js'
import { cleanDirectory, collect, runCli, spawnCli, startApiOf, startIdentity, startTestProxy, type Teardown, waitForLine } from './helpers/stack.js'
import type { ChildProcess } from 'node:child_process'

const CONFIDENTIAL = 'confidential-Login-Secret-2121'
const storeOf = (): string => join(mkdtempSync(join(tmpdir(), 'bearer-proxy-login-')), 'config', 'bearer-proxy', 'logins.json')
const stored = (store: string): string => Object.values((JSON.parse(readFileSync(store, 'utf8')) as { logins: Record<string, { refreshToken: string }> }).logins)[0]?.refreshToken ?? ''

async function person (t: Parameters<typeof startIdentity>[0]): ReturnType<typeof startIdentity> {
  return await startIdentity(t, {
    accessTokenTtl: 600,
    interactive: true,
    clients: [{ clientId: 'cli', authMethod: 'none', native: true }, { clientId: 'confidential', clientSecret: CONFIDENTIAL, authMethod: 'client_secret_basic', native: true }]
  })
}

t.test('login: the browser signs in, the loopback listener takes the code, the refresh token is stored 0600; token, check and serve then use it', async (t) => {
  const idp = await person(t)
  const api = await startApiOf(t, idp)
  const store = storeOf()
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: store, BEARER_PROXY_UPSTREAM: api.url }
  const { child, url, output } = await startLogin(t, env)
  const authorization = new URL(url)
  t.match(Object.fromEntries(authorization.searchParams), { response_type: 'code', client_id: 'cli', code_challenge_method: 'S256', scope: 'openid offline_access' })
  t.match(authorization.searchParams.get('redirect_uri'), /^http:\/\/127\.0\.0\.1:\d+\/callback$/)
  const back = await signIn(url, { user: 'alice' })
  const code = new URL(back).searchParams.get('code') ?? ''
  const arrived = await returnTo(back)
  t.equal(arrived.redirect.status, 303, 'the callback sends the browser on')
  t.equal(arrived.status, 200)
  t.match(arrived.body, /Logged in/)
  const [exitCode] = await once(child, 'exit') as [number]
  t.equal(exitCode, 0, output().stderr)
  t.match(output().stderr, /Logged in as alice\. The login is kept in .*logins\.json/)
  t.equal(statSync(store).mode & 0o777, 0o600, 'the store: its owner alone')
  t.equal(statSync(dirname(store)).mode & 0o777, 0o700)
  const first = stored(store)
  t.ok(first.length > 10)
  t.notOk(output().stderr.includes(code) || output().stderr.includes(first), 'neither the code nor the refresh token is printed')

  // token: the stored login is the grant (no GRANT set); the refresh token rotated is stored at once.
  const token = await runCli(['token'], env, { cwd: cleanDirectory() })
  t.equal(token.code, 0, token.stderr)
  t.equal(decodeJwt(token.stdout.trim()).sub, 'alice')
  t.not(stored(store), first, 'the rotated refresh token replaced the old one')
  t.notOk(token.stderr.includes(stored(store)))
  const check = await runCli(['check'], env, { cwd: cleanDirectory() })
  t.equal(check.code, 0, check.stderr)

  // serve: alice's token reaches the API; once her login is revoked, a clear 503 says to log in again.
  const { url: proxy, proxy: running, logs } = await startTestProxy(t, { ...env, BEARER_PROXY_PORT: '0' }, { backoffMs: 60_000 })
  const answer = await request(`${proxy}/items`)
  t.equal(answer.statusCode, 200)
  await answer.body.dump()
  t.equal(api.seen.at(-1)?.sub, 'alice')
  const revoked = await request(`${idp.issuer}/token/revocation`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ token: stored(store), client_id: 'cli' }).toString() })
  t.equal(revoked.statusCode, 200)
  await revoked.body.dump()
  running.tokens.drop(running.tokens.current() as NonNullable<ReturnType<typeof running.tokens.current>>)
  const refused = await request(`${proxy}/items`)
  t.equal(refused.statusCode, 503)
  t.match(await refused.body.json(), { error: 'token_unavailable', message: /answered 400 invalid_grant .*; the stored login is no longer accepted: run bearer-proxy login again$/ })
  t.notOk(logs.text.includes(first) || logs.text.includes(stored(store)), 'no refresh token in the log')
})

t.test('login refuses a callback with another state (and goes on waiting for its own), a denied consent, and gives up after its time limit; token without a login says to log in', async (t) => {
  const idp = await person(t)
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: storeOf() }

  const forged = await startLogin(t, env)
  const real = await signIn(forged.url)
  const back = new URL(real)
  back.searchParams.set('state', 'someone-elses-state')
  const refused = await returnTo(back)
  t.equal(refused.status, 400, 'a callback with another state is refused')
  t.match(refused.body, /Not the login the terminal is waiting for/)
  // The login goes on: the callback with its own state still logs in.
  const arrived = await returnTo(real)
  t.equal(arrived.status, 200)
  t.match(arrived.body, /Logged in/)
  const [forgedExit] = await once(forged.child, 'exit') as [number]
  t.equal(forgedExit, 0, forged.output().stderr)

  const denied = await startLogin(t, env)
  await returnTo(await signIn(denied.url, { deny: true }))
  const [deniedExit] = await once(denied.child, 'exit') as [number]
  t.equal(deniedExit, 1)
  t.match(denied.output().stderr, /the provider did not log you in: access_denied \(.*aborted interaction\)/)

  const late = await startLogin(t, { ...env, BEARER_PROXY_LOGIN_TIMEOUT: '0.5' })
  const [lateExit] = await once(late.child, 'exit') as [number]
  t.equal(lateExit, 1)
  t.match(late.output().stderr, /the browser did not come back within 0\.5 s/)

  const none = await runCli(['token'], { ...env, BEARER_PROXY_GRANT: 'login', BEARER_PROXY_TOKEN_STORE: storeOf() }, { cwd: cleanDirectory() })
  t.equal(none.code, 1)
  t.match(none.stderr, /no login is stored for client cli at http:\/\/127\.0\.0\.1:\d+: run bearer-proxy login/)
})

/** `bearer-proxy login --device` started, and the page and code it tells the person. */
async function startDeviceLogin (t: Teardown, env: Record<string, string>): Promise<{ child: ChildProcess, page: string, code: string, output: () => { stdout: string, stderr: string } }> {
  const child = spawnCli(['login', '--device'], env, cleanDirectory())
  t.teardown(() => { child.kill('SIGKILL') })
  const output = collect(child)
  // The last line of the instructions: the page and the code are above it.
  await waitForLine(child, /^Waiting for the login/, 10_000, 'stderr')
  const page = /open (\S+) on any device/.exec(output().stderr)?.[1] ?? ''
  const code = /enter the code\n\n {2}(\S+)\n/.exec(output().stderr)?.[1] ?? ''
  return { child, page, code, output }
}

t.test('login --device: the code approved at the provider\'s page on another device; a refusal is said plainly', async (t) => {
  const idp = await person(t)
  const store = storeOf()
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: store }
  const approved = await startDeviceLogin(t, env)
  t.match(approved.page, /^http:\/\/127\.0\.0\.1:\d+\/device$/)
  t.match(approved.code, /^[A-Z]{4}-[A-Z]{4}$/)
  await approveDevice(approved.page, approved.code, { user: 'bob' })
  const [exitCode] = await once(approved.child, 'exit') as [number]
  t.equal(exitCode, 0, approved.output().stderr)
  t.match(approved.output().stderr, /Logged in as bob\./)
  t.equal(statSync(store).mode & 0o777, 0o600)
  const token = await runCli(['token'], env, { cwd: cleanDirectory() })
  t.equal(decodeJwt(token.stdout.trim()).sub, 'bob')
  t.notOk(approved.output().stderr.includes(stored(store)))

  const refused = await startDeviceLogin(t, { ...env, BEARER_PROXY_TOKEN_STORE: storeOf() })
  await approveDevice(refused.page, refused.code, { deny: true })
  const [refusedExit] = await once(refused.child, 'exit') as [number]
  t.equal(refusedExit, 1)
  t.match(refused.output().stderr, /the login was refused at the provider: nothing was stored/)
})

t.test('login --device polls as the provider asks, stopping at expired_token (the timings on the clock: login-hostile.test.ts)', async (t) => {
  const polls: number[] = []
  let answers = ['authorization_pending', 'expired_token']
  const provider = await startTokenEndpoint(t, (call) => {
    if (call.path.endsWith('/.well-known/openid-configuration')) {
      return { body: { issuer: provider.url, authorization_endpoint: `${provider.url}/auth`, token_endpoint: `${provider.url}/token`, device_authorization_endpoint: `${provider.url}/device/auth` } }
    }
    if (call.path === '/device/auth') return { body: { device_code: 'dc-1', user_code: 'ABCD-EFGH', verification_uri: `${provider.url}/device`, expires_in: 60, interval: 0.05 } }
    polls.push(Date.now())
    return { status: 400, body: { error: answers.shift() ?? 'expired_token' } }
  })
  const env = { BEARER_PROXY_ISSUER: provider.url, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: storeOf() }
  const { child, output } = await startDeviceLogin(t, env)
  const [exitCode] = await once(child, 'exit') as [number]
  t.equal(exitCode, 1)
  t.match(output().stderr, /the code expired before the login was approved: start again with bearer-proxy login --device/)
  t.equal(polls.length, 2)
  t.ok((polls[1] as number) - (polls[0] as number) >= 900, 'a second apart at least')
  const fields = provider.calls.filter((call) => call.path === '/token').map((call) => call.fields)
  t.same(fields[0], { grant_type: 'urn:ietf:params:oauth:grant-type:device_code', device_code: 'dc-1', client_id: 'cli' })
  answers = []
})

t.test('logout revokes the stored refresh token at the provider (RFC 7009) and deletes it; with none stored it says so', async (t) => {
  const idp = await person(t)
  const store = storeOf()
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: store }
  const { child, url } = await startLogin(t, env)
  await returnTo(await signIn(url))
  await once(child, 'exit')
  const refreshToken = stored(store)
  const out = await runCli(['logout'], env, { cwd: cleanDirectory() })
  t.equal(out.code, 0, out.stderr)
  t.match(out.stderr, /^Logged out of http:\/\/127\.0\.0\.1:\d+: the refresh token was revoked at the provider; the stored login was deleted\.\n$/)
  t.same((JSON.parse(readFileSync(store, 'utf8')) as { logins: object }).logins, {}, 'the login is gone from the file')
  const used = await request(`${idp.issuer}/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken, client_id: 'cli' }).toString() })
  t.equal(used.statusCode, 400, 'the provider no longer accepts it')
  t.match(await used.body.json(), { error: 'invalid_grant' })
  t.notOk(out.stderr.includes(refreshToken))
  const again = await runCli(['logout'], env, { cwd: cleanDirectory() })
  t.equal(again.code, 0)
  t.match(again.stderr, /no login is stored for client cli at http:\/\/127\.0\.0\.1:\d+/)
})

t.test('login with a Keycloak realm found under /auth/realms (Run:ai self-hosted, older Keycloak): REALM and UPSTREAM, then token', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 600, interactive: true, path: '/auth/realms/runai', clients: [{ clientId: 'runai-cli', authMethod: 'none', native: true }] })
  const base = new URL(idp.issuer).origin
  const env = { BEARER_PROXY_UPSTREAM: base, BEARER_PROXY_REALM: 'runai', BEARER_PROXY_CLIENT_ID: 'runai-cli', BEARER_PROXY_TOKEN_STORE: storeOf() }
  const { child, url, output } = await startLogin(t, env)
  t.match(url, /\/auth\/realms\/runai\/auth\?/, 'the realm that exists was found')
  await returnTo(await signIn(url, { user: 'researcher' }))
  const [exitCode] = await once(child, 'exit') as [number]
  t.equal(exitCode, 0, output().stderr)
  const token = await runCli(['token'], { ...env, BEARER_PROXY_GRANT: 'login' }, { cwd: cleanDirectory() })
  t.equal(token.code, 0, token.stderr)
  t.equal(decodeJwt(token.stdout.trim()).sub, 'researcher')
})

t.test('login with Run:ai\'s own sign-in: its realm, the code exchanged and renewed by its token API; a refused login says to log in again; no device grant', async (t) => {
  // The realm knows runai-cli as a confidential client whose secret only the control plane holds: the CLI side has none.
  const cli = { id: 'runai-cli', secret: 'runai-Cli-Backend-Secret-4410' }
  const { runai } = await startRunaiWithRealm(t, 'tenant', cli)
  const store = storeOf()
  const env = { BEARER_PROXY_AUTH: 'runai', BEARER_PROXY_UPSTREAM: runai.url, BEARER_PROXY_REALM: 'tenant', BEARER_PROXY_CLIENT_ID: cli.id, BEARER_PROXY_TOKEN_STORE: store }
  const { child, url, output } = await startLogin(t, env)
  const authorization = new URL(url)
  t.match(url, /\/auth\/realms\/tenant\/auth\?/, 'the sign-in is the control plane\'s realm, found under /auth/realms')
  t.match(Object.fromEntries(authorization.searchParams), { response_type: 'code', client_id: cli.id, state: /.{20}/, nonce: /.{20}/ })
  t.notOk(authorization.searchParams.has('code_challenge'), 'no PKCE challenge: Run:ai\'s token request has no field for its verifier')
  const back = await signIn(url, { user: 'researcher' })
  const code = new URL(back).searchParams.get('code') ?? ''
  await returnTo(back)
  const [exitCode] = await once(child, 'exit') as [number]
  t.equal(exitCode, 0, output().stderr)
  t.match(output().stderr, /Logged in as researcher\./)
  t.match(runai.calls.at(-1), { path: '/api/v1/token', contentType: 'application/json', body: { grantType: 'exchange_token', code, redirectUri: authorization.searchParams.get('redirect_uri') } })
  t.ok(stored(store).length > 10, 'the realm\'s refresh token is stored')

  // token: the stored login is picked on its own (AUTH=runai, REALM, CLIENT_ID, no secret) and renewed at /api/v1/token.
  const token = await runCli(['token'], env, { cwd: cleanDirectory() })
  t.equal(token.code, 0, token.stderr)
  t.equal(decodeJwt(token.stdout.trim()).sub, 'researcher')
  t.match(runai.calls.at(-1), { path: '/api/v1/token', body: { grantType: 'refresh_token' } })

  // serve: the researcher's token reaches the API; once the control plane refuses the login, 503 says to log in again.
  const { url: proxy, proxy: running, logs } = await startTestProxy(t, { ...env, BEARER_PROXY_PORT: '0', BEARER_PROXY_CLUSTERS: '' }, { backoffMs: 60_000 })
  const answer = await request(`${proxy}/api/v1/workloads`)
  t.equal(answer.statusCode, 200)
  await answer.body.dump()
  t.equal(runai.served.at(-1), '/api/v1/workloads')
  runai.refuseRefresh = true
  running.tokens.drop(running.tokens.current() as NonNullable<ReturnType<typeof running.tokens.current>>)
  const refused = await request(`${proxy}/api/v1/workloads`)
  t.equal(refused.statusCode, 503)
  t.match(await refused.body.json(), { error: 'token_unavailable', message: /api\/v1\/token answered 401 .*; the stored login is no longer accepted: run bearer-proxy login again$/ })

  const device = await runCli(['login', '--device'], env, { cwd: cleanDirectory() })
  t.not(device.code, 0)
  t.match(device.stderr, /Run:ai's token API has no device grant: log in with a browser/)
  // Only token's stdout carries a token: no code, token, refresh token or the realm's secret anywhere else.
  const printed = output().stderr + token.stderr + device.stderr + logs.text
  t.same([code, cli.secret, ...runai.issued].filter((secret) => printed.includes(secret)), [], 'nothing secret is printed')
})

t.test('login with a confidential client: its secret authenticates the code exchange and the renewals, and is printed nowhere', async (t) => {
  const idp = await person(t)
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'confidential', BEARER_PROXY_CLIENT_SECRET: CONFIDENTIAL, BEARER_PROXY_CLIENT_AUTH: 'client_secret_basic', BEARER_PROXY_TOKEN_STORE: storeOf() }
  const { child, url, output } = await startLogin(t, env)
  await returnTo(await signIn(url, { user: 'carol' }))
  const [exitCode] = await once(child, 'exit') as [number]
  t.equal(exitCode, 0, output().stderr)
  const token = await runCli(['token'], { ...env, BEARER_PROXY_GRANT: 'login' }, { cwd: cleanDirectory() })
  t.equal(token.code, 0, token.stderr)
  t.equal(decodeJwt(token.stdout.trim()).sub, 'carol')
  t.notOk((output().stderr + token.stderr).includes(CONFIDENTIAL))
})
