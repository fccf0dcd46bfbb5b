import { once } from 'node:events'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { decodeJwt, decodeProtectedHeader } from 'jose'
import t from 'tap'
import { request } from 'undici'
import WebSocket from 'ws'
import { API_AUDIENCE } from '../demo/idp.js'
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
