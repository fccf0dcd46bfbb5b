import { once } from 'node:events'
import { mkdtempSync, readFileSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { decodeJwt } from 'jose'
import t from 'tap'
import { request } from 'undici'
import { signIn } from './helpers/browser.js'
import { cleanDirectory, collect, runCli, spawnCli, startApiOf, startIdentity, startTestProxy, waitForLine } from './helpers/stack.js'
import type { ChildProcess } from 'node:child_process'

const storeOf = (): string => join(mkdtempSync(join(tmpdir(), 'bearer-proxy-login-')), 'config', 'bearer-proxy', 'logins.json')
const stored = (store: string): string => Object.values((JSON.parse(readFileSync(store, 'utf8')) as { logins: Record<string, { refreshToken: string }> }).logins)[0]?.refreshToken ?? ''

async function person (t: Parameters<typeof startIdentity>[0]): ReturnType<typeof startIdentity> {
  return await startIdentity(t, { accessTokenTtl: 600, interactive: true, clients: [{ clientId: 'cli', authMethod: 'none', native: true }] })
}

/** `bearer-proxy login` started, and the URL it asks the person to open. */
async function startLogin (env: Record<string, string>): Promise<{ child: ChildProcess, url: string, output: () => { stdout: string, stderr: string } }> {
  const child = spawnCli(['login'], env, cleanDirectory())
  const output = collect(child)
  const line = await waitForLine(child, /^\s+http:\/\/127\.0\.0\.1:\d+\/auth\?/, 10_000, 'stderr')
  return { child, url: line.trim(), output }
}

t.test('login: the browser signs in, the loopback listener takes the code, the refresh token is stored 0600; token, check and serve then use it', async (t) => {
  const idp = await person(t)
  const api = await startApiOf(t, idp)
  const store = storeOf()
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: store, BEARER_PROXY_UPSTREAM: api.url }
  const { child, url, output } = await startLogin(env)
  const authorization = new URL(url)
  t.match(Object.fromEntries(authorization.searchParams), { response_type: 'code', client_id: 'cli', code_challenge_method: 'S256', scope: 'openid offline_access' })
  t.match(authorization.searchParams.get('redirect_uri'), /^http:\/\/127\.0\.0\.1:\d+\/callback$/)
  const back = await signIn(url, { user: 'alice' })
  const code = new URL(back).searchParams.get('code') ?? ''
  const arrived = await request(back)
  t.equal(arrived.statusCode, 200)
  t.match(await arrived.body.text(), /Logged in/)
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

t.test('login refuses a callback with another state, a denied consent, and gives up after its time limit; token without a login says to log in', async (t) => {
  const idp = await person(t)
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: storeOf() }

  const forged = await startLogin(env)
  const back = new URL(await signIn(forged.url))
  back.searchParams.set('state', 'someone-elses-state')
  await (await request(back)).body.dump()
  const [forgedExit] = await once(forged.child, 'exit') as [number]
  t.equal(forgedExit, 1)
  t.match(forged.output().stderr, /the browser came back with another login's state: nothing was stored/)

  const denied = await startLogin(env)
  await (await request(await signIn(denied.url, { deny: true }))).body.dump()
  const [deniedExit] = await once(denied.child, 'exit') as [number]
  t.equal(deniedExit, 1)
  t.match(denied.output().stderr, /the provider did not log you in: access_denied \(.*aborted interaction\)/)

  const late = await startLogin({ ...env, BEARER_PROXY_LOGIN_TIMEOUT: '0.5' })
  const [lateExit] = await once(late.child, 'exit') as [number]
  t.equal(lateExit, 1)
  t.match(late.output().stderr, /the browser did not come back within 0\.5 s/)

  const none = await runCli(['token'], { ...env, BEARER_PROXY_GRANT: 'login' }, { cwd: cleanDirectory() })
  t.equal(none.code, 1)
  t.match(none.stderr, /no login is stored for client cli at http:\/\/127\.0\.0\.1:\d+: run bearer-proxy login/)
})
