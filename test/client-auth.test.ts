import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { mkdtempSync, renameSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { JWK } from 'jose'
import t from 'tap'
import { request } from 'undici'
import { ConfigError, loadConfig } from '../src/config.js'
import { assertNoSecret } from './helpers/secrets.js'
import { startApiOf, startIdentity, startTestProxy, startTokenManager } from './helpers/stack.js'

const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-client-auth-'))
/** Written to a temporary name and renamed over, as a rotated Secret is. */
const write = (name: string, text: string): string => {
  writeFileSync(join(dir, `.${name}.tmp`), text, { mode: 0o600 })
  renameSync(join(dir, `.${name}.tmp`), join(dir, name))
  return join(dir, name)
}

/** A key pair made by the test: its private key as PEM (PKCS#8) and as a JWK, its public JWK. */
function keyPair (type: 'rsa' | 'ec' | 'ed25519' | 'ec384', kid: string, alg?: string): { pem: string, jwk: JWK, publicJwk: JWK } {
  const { privateKey, publicKey } = type === 'rsa'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : type === 'ed25519' ? generateKeyPairSync('ed25519') : generateKeyPairSync('ec', { namedCurve: type === 'ec' ? 'P-256' : 'P-384' })
  const jwkOf = (key: KeyObject): JWK => ({ ...key.export({ format: 'jwk' }) as JWK, kid, ...(alg === undefined ? {} : { alg }) })
  return { pem: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, jwk: jwkOf(privateKey), publicJwk: jwkOf(publicKey) }
}

const rsa = keyPair('rsa', 'rsa-1')
const rsaNext = keyPair('rsa', 'rsa-2')
const ec = keyPair('ec', 'ec-1')
const ed = keyPair('ed25519', 'ed-1')
const pss = keyPair('rsa', 'pss-1', 'PS256')
const stranger = keyPair('rsa', 'rsa-1')
const HMAC_SECRET = 'hmac-Secret-For-Jwt-4471-long-enough-for-HS256'

async function signedIdp (t: Parameters<typeof startIdentity>[0]): ReturnType<typeof startIdentity> {
  return await startIdentity(t, {
    accessTokenTtl: 600,
    clients: [
      { clientId: 'signer', authMethod: 'private_key_jwt', jwks: { keys: [rsa, rsaNext, ec, ed, pss].map(({ publicJwk }) => publicJwk) } },
      { clientId: 'hmac', clientSecret: HMAC_SECRET, authMethod: 'client_secret_jwt' }
    ]
  })
}

t.test('private_key_jwt: an assertion signed with the client\'s key, by its type; oidc-provider accepts each; the key is re-read when its file changes', async (t) => {
  const idp = await signedIdp(t)
  const api = await startApiOf(t, idp)
  const keyFile = write('rsa.jwk', JSON.stringify(rsa.jwk))
  const { url, proxy, logs } = await startTestProxy(t, {
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: 'signer',
    BEARER_PROXY_CLIENT_AUTH: 'private_key_jwt',
    BEARER_PROXY_CLIENT_KEY_FILE: keyFile,
    BEARER_PROXY_UPSTREAM: api.url,
    BEARER_PROXY_PORT: '0',
    BEARER_PROXY_LOG_LEVEL: 'trace'
  })
  const answer = await request(`${url}/items`)
  t.equal(answer.statusCode, 200)
  await answer.body.dump()
  t.equal(api.seen.at(-1)?.sub, 'signer', 'the API accepted a token issued to the signing client')
  const [first] = idp.assertions
  t.match(first?.header, { alg: 'RS256', kid: 'rsa-1' })
  t.match(first?.payload, { iss: 'signer', sub: 'signer', aud: idp.tokenUrl })
  t.equal(Number(first?.payload.exp) - Number(first?.payload.iat), 60, 'valid for 60 s')
  t.notOk(first?.fields.includes('client_secret'), 'no secret is sent')
  t.same(first?.fields.filter((name) => name.startsWith('client_')).sort(), ['client_assertion', 'client_assertion_type', 'client_id'])

  // Rotated: the next token request signs with the new key, under its own kid.
  write('rsa.jwk', JSON.stringify(rsaNext.jwk))
  proxy.tokens.drop(proxy.tokens.current() as NonNullable<ReturnType<typeof proxy.tokens.current>>)
  await proxy.tokens.get()
  t.match(idp.assertions.at(-1)?.header, { alg: 'RS256', kid: 'rsa-2' })
  t.not(idp.assertions.at(-1)?.payload.jti, first?.payload.jti, 'a fresh jti')
  t.equal(idp.tokenRequests, 2)
  const keys = [rsa, rsaNext].flatMap(({ pem, jwk }) => [...pem.split('\n').filter((line) => line.length > 40), String(jwk.d), String(jwk.p), String(jwk.q)])
  assertNoSecret(t, 'log', logs.lines.join('\n'), keys)
})

t.test('private_key_jwt by key type: EC P-256 (ES256), Ed25519 (EdDSA), an RSA JWK asking PS256; kid from the JWK, or CLIENT_KEY_ID for a PEM', async (t) => {
  const idp = await signedIdp(t)
  for (const [name, text, alg, kid] of [
    ['ec.jwk', JSON.stringify(ec.jwk), 'ES256', 'ec-1'],
    ['ed.pem', ed.pem, 'EdDSA', 'ed-1'],
    ['pss.jwk', JSON.stringify(pss.jwk), 'PS256', 'pss-1']
  ] as Array<[string, string, string, string]>) {
    const { tokens } = startTokenManager(t, {
      BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
      BEARER_PROXY_CLIENT_ID: 'signer',
      BEARER_PROXY_CLIENT_AUTH: 'private_key_jwt',
      BEARER_PROXY_CLIENT_KEY_FILE: write(name, text),
      // A PEM has no kid of its own: CLIENT_KEY_ID gives it.
      ...(name.endsWith('.pem') ? { BEARER_PROXY_CLIENT_KEY_ID: kid } : {})
    })
    const token = await tokens.get()
    t.ok(token.reveal().length > 0, `${alg}: a token`)
    t.same(idp.assertions.at(-1)?.header, { alg, kid }, `${alg}: its header`)
  }
})

t.test('CLIENT_ASSERTION_AUDIENCE=issuer puts the issuer in aud; client_secret_jwt signs with the secret (HS256) and never sends it', async (t) => {
  const idp = await signedIdp(t)
  const byIssuer = startTokenManager(t, {
    BEARER_PROXY_ISSUER: idp.issuer,
    BEARER_PROXY_CLIENT_ID: 'signer',
    BEARER_PROXY_CLIENT_AUTH: 'private_key_jwt',
    BEARER_PROXY_CLIENT_KEY_FILE: write('ec-issuer.jwk', JSON.stringify(ec.jwk)),
    BEARER_PROXY_CLIENT_ASSERTION_AUDIENCE: 'issuer'
  })
  await byIssuer.tokens.get()
  t.equal(idp.assertions.at(-1)?.payload.aud, idp.issuer)

  const hmac = startTokenManager(t, {
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: 'hmac',
    BEARER_PROXY_CLIENT_SECRET: HMAC_SECRET,
    BEARER_PROXY_CLIENT_AUTH: 'client_secret_jwt'
  })
  await hmac.tokens.get()
  t.match(idp.assertions.at(-1), { header: { alg: 'HS256' }, payload: { iss: 'hmac', sub: 'hmac', aud: idp.tokenUrl } })
  t.notOk(idp.assertions.at(-1)?.fields.includes('client_secret'), 'the secret itself is not sent')
  assertNoSecret(t, 'log', hmac.logs.lines.join('\n'), [HMAC_SECRET])
})

t.test('a key the provider does not know: 503 token_unavailable naming the provider\'s answer; nothing of the key in the answer or the log', async (t) => {
  const idp = await signedIdp(t)
  const api = await startApiOf(t, idp)
  const { url, logs } = await startTestProxy(t, {
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: 'signer',
    BEARER_PROXY_CLIENT_AUTH: 'private_key_jwt',
    BEARER_PROXY_CLIENT_KEY_FILE: write('stranger.pem', stranger.pem),
    BEARER_PROXY_UPSTREAM: api.url,
    BEARER_PROXY_PORT: '0',
    BEARER_PROXY_LOG_LEVEL: 'trace'
  }, { backoffMs: 60_000 })
  const answer = await request(`${url}/items`)
  t.equal(answer.statusCode, 503)
  const body = await answer.body.text()
  t.match(JSON.parse(body), { error: 'token_unavailable', message: /token endpoint http:\/\/127\.0\.0\.1:\d+\/token answered 401 invalid_client \(client authentication failed\)/ })
  t.equal(api.seen.length, 0)
  const lines = stranger.pem.split('\n').filter((line) => line.length > 40)
  assertNoSecret(t, 'answer', body, lines)
  assertNoSecret(t, 'log', logs.lines.join('\n'), lines)
})

t.test('a key that cannot be used stops the start, naming the setting and never the key', async (t) => {
  const problems = (env: Record<string, string>): string => {
    try {
      loadConfig({ env: { BEARER_PROXY_TOKEN_URL: 'https://idp.example/token', BEARER_PROXY_CLIENT_ID: 'signer', BEARER_PROXY_CLIENT_AUTH: 'private_key_jwt', BEARER_PROXY_UPSTREAM: 'https://api.example', ...env }, envFile: '/dev/null' })
      return ''
    } catch (error) {
      return (error as ConfigError).problems.join('\n')
    }
  }
  const publicPem = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ format: 'pem', type: 'spki' }) as string
  const encrypted = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'pass-Phrase-1' }) as string
  const p384 = keyPair('ec384', 'p384')
  for (const [name, text, said] of [
    ['public.pem', publicPem, /CLIENT_KEY_FILE: holds a public key or certificate, not a private key/],
    ['public.jwk', JSON.stringify(rsa.publicJwk), /CLIENT_KEY_FILE: holds a public key, not a private key/],
    ['encrypted.pem', encrypted, /CLIENT_KEY_FILE: is an encrypted key/],
    ['p384.pem', p384.pem, /CLIENT_KEY_FILE: is an EC key on secp384r1: assertions are signed with RSA, EC P-256 or Ed25519 keys/],
    ['garbage.pem', '-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n', /CLIENT_KEY_FILE: is not a private key/]
  ] as Array<[string, string, RegExp]>) {
    const text2 = problems({ BEARER_PROXY_CLIENT_KEY_FILE: write(name, text) })
    t.match(text2, said, name)
    t.notMatch(text2, /BEGIN|MII/, `${name}: nothing of the file`)
  }
  t.match(problems({ BEARER_PROXY_CLIENT_KEY_FILE: join(dir, 'missing.pem') }), /CLIENT_KEY_FILE: cannot read .*missing\.pem \(ENOENT\)/)
  t.match(problems({}), /CLIENT_KEY_FILE: required for AUTH=oidc GRANT=client_credentials CLIENT_AUTH=private_key_jwt/)
  t.match(problems({ BEARER_PROXY_CLIENT_KEY_FILE: write('ok.pem', rsa.pem), BEARER_PROXY_CLIENT_SECRET: 'x' }), /CLIENT_SECRET: does nothing with AUTH=oidc/)
  t.match(problems({ BEARER_PROXY_CLIENT_KEY_FILE: write('ok.pem', rsa.pem), BEARER_PROXY_CLIENT_ASSERTION_AUDIENCE: 'issuer' }), /CLIENT_ASSERTION_AUDIENCE: issuer needs BEARER_PROXY_ISSUER/)
  t.match(problems({ BEARER_PROXY_CLIENT_AUTH: 'client_secret_post', BEARER_PROXY_CLIENT_SECRET: 'x', BEARER_PROXY_CLIENT_KEY_FILE: write('ok.pem', rsa.pem) }), /CLIENT_KEY_FILE: does nothing with AUTH=oidc GRANT=client_credentials \(only CLIENT_AUTH=private_key_jwt or GRANT=jwt_bearer reads it\)/)
})
