import { once } from 'node:events'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { decodeJwt, decodeProtectedHeader } from 'jose'
import t from 'tap'
import { request } from 'undici'
import WebSocket from 'ws'
import { API_AUDIENCE } from '../demo/idp.js'
import { signIn, startLogin, returnTo } from './helpers/browser.js'
import { startDPoPUpstream } from './helpers/dpop-upstream.js'
import { assertNoSecret, fragments } from './helpers/secrets.js'
import { CLIENT, cleanDirectory, runCli, startIdentity, startTestProxy } from './helpers/stack.js'
import { startTokenEndpoint } from './helpers/token-endpoint.js'

/**
 * DPoP (RFC 9449): the proxy holds the key, binds its tokens to it at oidc-provider,
 * and sends every request with a fresh proof to an upstream that checks each one as a
 * resource server must, and refuses a proof replayed from its own log.
 */

const dpopEnv = (idp: { tokenUrl: string }, upstream: string, extra: Record<string, string> = {}): Record<string, string> => ({
  BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
  BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
  BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret,
  BEARER_PROXY_DPOP: 'true',
  BEARER_PROXY_UPSTREAM: upstream,
  BEARER_PROXY_PORT: '0',
  BEARER_PROXY_LOG_LEVEL: 'trace',
  ...extra
})

t.test('DPOP=true: a token bound to the proxy\'s key, a fresh proof with every request (HTTP and WebSocket), and a proof replayed from the upstream\'s log refused', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 600 })
  const api = await startDPoPUpstream(t, idp, API_AUDIENCE)
  const { url, proxy, logs } = await startTestProxy(t, dpopEnv(idp, api.url))
  for (const path of ['/v1/a?x=1', '/v1/b', '/v1/a']) {
    const answer = await request(`${url}${path}`)
    t.equal(answer.statusCode, 200, `${path}: ${api.refused.join('; ')}`)
    await answer.body.dump()
  }
  const posted = await request(`${url}/v1/jobs`, { method: 'POST', body: '{"x":1}', headers: { 'content-type': 'application/json' } })
  t.equal(posted.statusCode, 200, 'POST, its own htm')
  await posted.body.dump()
  const held = proxy.tokens.current()
  t.equal(held?.authorization.split(' ')[0], 'DPoP', 'held as a DPoP token')
  t.type((decodeJwt(held?.reveal() ?? '').cnf as { jkt?: string } | undefined)?.jkt, 'string', 'bound to a key by the provider (cnf.jkt)')
  t.equal(new Set(api.proofs).size, api.proofs.length, 'a fresh proof each time')
  t.same(api.proofs.map((proof) => decodeProtectedHeader(proof).typ), api.proofs.map(() => 'dpop+jwt'))

  // WebSocket upgrades carry a proof of their own.
  const ws = new WebSocket(`${url.replace('http', 'ws')}/v1/watch`)
  const [greeting] = await once(ws, 'message') as [Buffer]
  t.match(greeting.toString(), /^hello /, 'the upgrade was accepted with its proof')
  ws.close()

  // The binding: the token and a proof copied from the upstream's log are useless to anyone else.
  const stolen = { authorization: held?.authorization ?? '', dpop: api.proofs[0] ?? '' }
  const replayed = await request(`${api.url}/v1/a`, { headers: stolen })
  t.equal(replayed.statusCode, 401, 'a replayed proof is refused')
  await replayed.body.dump()
  t.match(api.refused.at(-1), /replay|htu/)
  const bare = await request(`${api.url}/v1/a`, { headers: { authorization: `Bearer ${held?.reveal() ?? ''}` } })
  t.equal(bare.statusCode, 401, 'and the token alone is refused')
  await bare.body.dump()
  assertNoSecret(t, 'log at trace', logs.text, fragments([...api.proofs, held?.reveal() ?? '']))
})

t.test('nonces: the provider\'s (use_dpop_nonce on the token request) and the upstream\'s (a 401 asking for it) are each answered by one retry, a POST body sent again', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 600, dpop: { requireNonce: true } })
  const api = await startDPoPUpstream(t, idp, API_AUDIENCE, 2)
  api.requireNonce = true
  const { url, logs } = await startTestProxy(t, dpopEnv(idp, api.url))
  for (let i = 0; i < 5; i++) {
    const answer = await request(`${url}/v1/jobs`, { method: 'POST', body: `{"n":${i}}`, headers: { 'content-type': 'application/json' } })
    t.equal(answer.statusCode, 200, `request ${i}: ${api.refused.join('; ')}`)
    await answer.body.dump()
  }
  t.equal(api.accepted.length, 5)
  t.same(api.refused, ['use_dpop_nonce: the resource server\'s nonce'], 'asked for its nonce once: later ones came with its answers and were used')
  const nonces = new Set(api.proofs.map((proof) => decodeJwt(proof).nonce).filter(Boolean))
  t.ok(nonces.size >= 3, `its nonce changed and each new one was used (${nonces.size})`)
  t.equal(logs.events('token_failed').length, 0, 'the provider\'s nonce was taken on the token request')
})

t.test('a server that does not bind: DPOP=true uses the token as a bearer token with one warning; DPOP=required refuses it; a bad DPOP_KEY_FILE stops the start', async (t) => {
  const plain = await startTokenEndpoint(t, (call) => ({ body: { access_token: `plain-${call.headers.dpop === undefined ? 'none' : 'proof'}`, token_type: 'Bearer', expires_in: 600 } }))
  const echo = await startTokenEndpoint(t, (call) => ({ body: { authorization: call.headers.authorization, dpop: call.headers.dpop !== undefined } }))
  const { url, logs } = await startTestProxy(t, dpopEnv({ tokenUrl: `${plain.url}/token` }, echo.url))
  const answer = await request(`${url}/x`)
  t.same(await answer.body.json(), { authorization: 'Bearer plain-proof', dpop: false }, 'asked with a proof, used as a bearer token')
  t.equal(logs.events('dpop_not_bound').length, 1)
  const required = await runCli(['token'], { ...dpopEnv({ tokenUrl: `${plain.url}/token` }, echo.url), BEARER_PROXY_DPOP: 'required', BEARER_PROXY_LOG_LEVEL: 'silent' }, { cwd: cleanDirectory() })
  t.equal(required.code, 1)
  t.match(required.stderr, /not DPoP-bound \(token_type Bearer\), and BEARER_PROXY_DPOP=required/)

  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-dpop-'))
  writeFileSync(join(dir, 'p384.pem'), generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey.export({ format: 'pem', type: 'pkcs8' }))
  const bad = await runCli(['check'], { ...dpopEnv({ tokenUrl: `${plain.url}/token` }, echo.url), BEARER_PROXY_DPOP_KEY_FILE: join(dir, 'p384.pem') }, { cwd: cleanDirectory() })
  t.equal(bad.code, 2)
  t.match(bad.stderr, /BEARER_PROXY_DPOP_KEY_FILE: is an EC key on secp384r1/)
})

t.test('DPOP_KEY_FILE: an Ed25519 or RSA key of one\'s own; token and check say the token is useless without a proof', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 600 })
  const api = await startDPoPUpstream(t, idp, API_AUDIENCE)
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-dpop-'))
  for (const [name, key] of [['ed25519.pem', generateKeyPairSync('ed25519').privateKey], ['rsa.pem', generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey]] as const) {
    writeFileSync(join(dir, name), key.export({ format: 'pem', type: 'pkcs8' }))
    const env = { ...dpopEnv(idp, api.url), BEARER_PROXY_DPOP_KEY_FILE: join(dir, name), BEARER_PROXY_LOG_LEVEL: 'silent' }
    const check = await runCli(['check'], env, { cwd: cleanDirectory() })
    t.equal(check.code, 0, `${name}: ${check.stdout}${check.stderr}`)
    t.match(check.stdout, /binding: DPoP \(RFC 9449\)/)
    t.match(check.stdout, /ok: upstream admin .* answered 200/, 'check sent its request with a proof')
    const token = await runCli(['token'], env, { cwd: cleanDirectory() })
    t.equal(token.code, 0)
    t.match(token.stderr, /DPoP-bound \(RFC 9449\): useless without a proof/)
    t.equal(decodeJwt(token.stdout.trim()).sub, CLIENT.clientId)
  }
})

t.test('a revoked DPoP token: the 401 is about the token, a new one is bound and the request sent again with a new proof; reloads and the cluster list keep proofs', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 600 })
  const api = await startDPoPUpstream(t, idp, API_AUDIENCE)
  const { url, proxy } = await startTestProxy(t, dpopEnv(idp, api.url))
  const first = await request(`${url}/v1/a`)
  t.equal(first.statusCode, 200)
  await first.body.dump()
  api.revoked.add(api.tokens[0] as string)
  const again = await request(`${url}/v1/a`, { method: 'POST', body: 'x=1' })
  t.equal(again.statusCode, 200, 'answered with a new token')
  await again.body.dump()
  t.equal(new Set(api.tokens).size, 2, 'a second token, bound like the first')
  t.match(api.refused, [/^invalid_token: revoked$/])
  t.equal(proxy.tokens.current()?.authorization.split(' ')[0], 'DPoP')

  // The Run:ai cluster list is read with the token and a proof of its own.
  const { listClusters } = await import('../src/cluster-discovery.js')
  const { Agent } = await import('undici')
  const agent = new Agent()
  t.teardown(async () => await agent.close())
  // The stand-in control plane answers with no list: what matters is how it was asked.
  await listClusters(new URL(api.url), proxy.tokens, agent, 5).catch(() => undefined)
  t.equal(api.refused.length, 1, `its proof was accepted (${api.refused.join('; ')})`)
  t.equal(api.accepted.length, 3)
  t.match(decodeJwt(api.proofs.at(-1) ?? ''), { htm: 'GET', htu: `${api.url}/api/v1/clusters` })
})

t.test('a person\'s login with DPoP: the refresh token is bound to a key kept with it in the 0600 store; a new process uses that key, without it the refresh is refused, and logout forgets both', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 600, interactive: true, clients: [{ clientId: 'cli', authMethod: 'none', native: true }] })
  const api = await startDPoPUpstream(t, idp, API_AUDIENCE)
  const store = join(mkdtempSync(join(tmpdir(), 'bearer-proxy-dpop-login-')), 'logins.json')
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: store, BEARER_PROXY_UPSTREAM: api.url, BEARER_PROXY_DPOP: 'true' }
  const { child, url, output } = await startLogin(t, env)
  await returnTo(await signIn(url, { user: 'alice' }))
  const [code] = await once(child, 'exit') as [number]
  t.equal(code, 0, output().stderr)
  const entry = (): { refreshToken: string, dpopKey?: Record<string, unknown> } => Object.values((JSON.parse(readFileSync(store, 'utf8')) as { logins: Record<string, { refreshToken: string, dpopKey?: Record<string, unknown> }> }).logins)[0] ?? { refreshToken: '' }
  t.type(entry().dpopKey?.d, 'string', 'the private key is kept with the login')
  t.notOk(output().stderr.includes(String(entry().dpopKey?.d)), 'and never printed')

  // Another process: the stored key proves the refresh token, and the new token is bound to it.
  const check = await runCli(['check'], env, { cwd: cleanDirectory() })
  t.equal(check.code, 0, check.stdout + check.stderr)
  t.match(check.stdout, /binding: DPoP/)
  t.equal(api.accepted.at(-1), 'alice')
  const key = entry().dpopKey
  t.ok(key !== undefined, 'the key stays with the rotated refresh token')

  // Without the key, the bound refresh token is useless.
  const file = JSON.parse(readFileSync(store, 'utf8')) as { logins: Record<string, Record<string, unknown>> }
  for (const login of Object.values(file.logins)) delete login.dpopKey
  writeFileSync(store, JSON.stringify(file), { mode: 0o600 })
  const keyless = await runCli(['token'], env, { cwd: cleanDirectory() })
  t.equal(keyless.code, 1, 'refused without its key')
  t.match(keyless.stderr, /answered 400 invalid_grant/)

  const logout = await runCli(['logout'], env, { cwd: cleanDirectory() })
  t.equal(logout.code, 0, logout.stderr)
  t.same((JSON.parse(readFileSync(store, 'utf8')) as { logins: object }).logins, {}, 'the login and its key are gone')
})

t.test('a reload that brings a DPoP key of one\'s own: the set gets a token bound to it, requests keep their proofs, and /-/metrics counts the set\'s tokens', async (t) => {
  const { configOf } = await import('./helpers/stack.js')
  const { calculateJwkThumbprint, exportJWK } = await import('jose')
  const idp = await startIdentity(t, { accessTokenTtl: 600 })
  const api = await startDPoPUpstream(t, idp, API_AUDIENCE)
  const env = dpopEnv(idp, api.url)
  const { url, proxy } = await startTestProxy(t, env)
  const before = await request(`${url}/v1/a`)
  t.equal(before.statusCode, 200)
  await before.body.dump()
  const key = generateKeyPairSync('ed25519')
  const file = join(mkdtempSync(join(tmpdir(), 'bearer-proxy-dpop-reload-')), 'dpop.pem')
  writeFileSync(file, key.privateKey.export({ format: 'pem', type: 'pkcs8' }))
  const summary = await proxy.reconfigure(configOf({ ...env, BEARER_PROXY_DPOP_KEY_FILE: file }))
  t.same(summary.sets.changed, ['default'])
  const after = await request(`${url}/v1/b`)
  t.equal(after.statusCode, 200, api.refused.join('; '))
  await after.body.dump()
  const jkt = (decodeJwt(proxy.tokens.current()?.reveal() ?? '').cnf as { jkt?: string } | undefined)?.jkt
  t.equal(jkt, await calculateJwkThumbprint(await exportJWK(key.publicKey)), 'bound to the key of the file now')
  const metrics = await (await request(`${url}/-/metrics`)).body.text()
  t.match(metrics, /bearer_proxy_token_fetches_total\{credentials="default",result="success"\} 2/)
})

t.test('credential sets: a DPoP set and a bearer set behind one port, each route with its own kind of token', async (t) => {
  const { loadConfig } = await import('../src/config.js')
  const { startApiOf } = await import('./helpers/stack.js')
  const idp = await startIdentity(t, { accessTokenTtl: 600 })
  const bound = await startDPoPUpstream(t, idp, API_AUDIENCE)
  const plain = await startApiOf(t, idp)
  const file = join(mkdtempSync(join(tmpdir(), 'bearer-proxy-dpop-sets-')), 'sets.yaml')
  const set = `tokenUrl: ${idp.tokenUrl}\n    clientId: ${CLIENT.clientId}\n    clientSecret: ${CLIENT.clientSecret}`
  writeFileSync(file, `port: 0\ncredentials:\n  bound:\n    ${set}\n    dpop: "true"\n  plain:\n    ${set}\nroutes:\n  - { prefix: /bound, upstream: "${bound.url}", credentials: bound }\n  - { prefix: /plain, upstream: "${plain.url}", credentials: plain }\n`)
  const { url, proxy } = await startTestProxy(t, {}, {}, loadConfig({ configFile: file, env: {} }))
  for (const path of ['/bound/v1/a', '/plain/v1/a', '/bound/v1/b']) {
    const answer = await request(`${url}${path}`)
    t.equal(answer.statusCode, 200, `${path}: ${bound.refused.join('; ')}`)
    await answer.body.dump()
  }
  t.equal(bound.accepted.length, 2)
  t.match(plain.seen.at(-1)?.headers, { authorization: /^Bearer / })
  t.equal(plain.seen.at(-1)?.headers.dpop, undefined, 'no proof where the set has no key')
  t.equal(proxy.setTokens.get('bound')?.current()?.authorization.split(' ')[0], 'DPoP')
})
