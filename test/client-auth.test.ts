import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { mkdtempSync, renameSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { JWK } from 'jose'
import t from 'tap'
import { request } from 'undici'
import { ConfigError, loadConfig } from '../src/config.js'
import { startGoogle } from './helpers/emulators.js'
import { assertNoSecret } from './helpers/secrets.js'
import { startTokenEndpoint } from './helpers/token-endpoint.js'
import { cleanDirectory, runCli, spawnCli, startApiOf, startIdentity, startTestProxy, startTokenManager, waitForLine } from './helpers/stack.js'

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
    t.same(idp.assertions.at(-1)?.header, { alg, typ: 'JWT', kid }, `${alg}: its header`)
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

  // Signed with another secret: refused, and the refusal says so.
  const wrong = startTokenManager(t, {
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: 'hmac',
    BEARER_PROXY_CLIENT_SECRET: 'not-the-Hmac-Secret-0000-long-enough-for-HS256',
    BEARER_PROXY_CLIENT_AUTH: 'client_secret_jwt'
  }, { backoffMs: 60_000 })
  await t.rejects(wrong.tokens.get(), { code: 'token_unavailable', message: /answered 401 invalid_client \(client authentication failed\)/ })
  assertNoSecret(t, 'log', wrong.logs.lines.join('\n'), ['not-the-Hmac-Secret-0000-long-enough-for-HS256'])
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
  t.match(problems({ BEARER_PROXY_CLIENT_AUTH: 'client_secret_post', BEARER_PROXY_CLIENT_SECRET: 'x', BEARER_PROXY_CLIENT_KEY_FILE: write('ok.pem', rsa.pem) }), /CLIENT_KEY_FILE: does nothing with AUTH=oidc GRANT=client_credentials \(only CLIENT_AUTH=private_key_jwt, GRANT=jwt_bearer or CLIENT_CERT_FILE reads it\)/)
})

t.test('GRANT=jwt_bearer from a Google service account key file: one setting and SCOPE; the assertion is the grant', async (t) => {
  const google = await startGoogle(t)
  const { url, logs } = await startTestProxy(t, {
    BEARER_PROXY_SERVICE_ACCOUNT_FILE: google.keyFile,
    BEARER_PROXY_SCOPE: 'https://www.googleapis.com/auth/devstorage.read_only',
    BEARER_PROXY_UPSTREAM: google.url,
    BEARER_PROXY_PORT: '0',
    BEARER_PROXY_LOG_LEVEL: 'trace'
  })
  const answer = await request(`${url}/storage/v1/b?project=project-4711`)
  t.equal(answer.statusCode, 200)
  t.same(await answer.body.json(), { path: '/storage/v1/b' })
  const [seen] = google.assertions
  t.equal(seen?.accepted, true)
  t.match(seen?.header, { alg: 'RS256', kid: 'f3a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3' })
  t.match(seen?.payload, { iss: google.clientEmail, aud: `${google.url}/token`, scope: 'https://www.googleapis.com/auth/devstorage.read_only' })
  t.notOk('sub' in (seen?.payload ?? {}), 'no sub: the account acts as itself')
  t.same(seen?.fields, ['grant_type', 'assertion'], 'the grant and its assertion, nothing else')
  const { readFileSync } = await import('node:fs')
  const key = String((JSON.parse(readFileSync(google.keyFile, 'utf8')) as { private_key: string }).private_key)
  assertNoSecret(t, 'log', logs.lines.join('\n'), key.split('\n').filter((line) => line.length > 40))
})

t.test('GRANT=jwt_bearer with CLIENT_ID and CLIENT_KEY_FILE (RFC 7523 §2.1): iss = sub = the client, SCOPE in the form', async (t) => {
  const endpoint = await startTokenEndpoint(t, () => ({ body: { access_token: 'granted-for-assertion', token_type: 'Bearer', expires_in: 600 } }))
  const { tokens } = startTokenManager(t, {
    BEARER_PROXY_TOKEN_URL: `${endpoint.url}/token`,
    BEARER_PROXY_GRANT: 'jwt_bearer',
    BEARER_PROXY_CLIENT_ID: 'workload-7',
    BEARER_PROXY_CLIENT_KEY_FILE: write('workload.jwk', JSON.stringify(ec.jwk)),
    BEARER_PROXY_SCOPE: 'api.read'
  })
  t.equal((await tokens.get()).reveal(), 'granted-for-assertion')
  const { fields } = endpoint.calls[0] as { fields: Record<string, string> }
  t.same(Object.keys(fields), ['grant_type', 'assertion', 'scope'])
  t.equal(fields.grant_type, 'urn:ietf:params:oauth:grant-type:jwt-bearer')
  const { decodeJwt, decodeProtectedHeader } = await import('jose')
  t.match(decodeProtectedHeader(fields.assertion as string), { alg: 'ES256', kid: 'ec-1' })
  t.match(decodeJwt(fields.assertion as string), { iss: 'workload-7', sub: 'workload-7', aud: `${endpoint.url}/token` })
})

t.test('a service account whose key the token endpoint does not know: 503 with its answer; a key file that cannot be used stops the start', async (t) => {
  const google = await startGoogle(t)
  const { readFileSync } = await import('node:fs')
  const account = JSON.parse(readFileSync(google.keyFile, 'utf8')) as Record<string, string>
  const forged = write('forged.json', JSON.stringify({ ...account, private_key: stranger.pem }))
  const { url } = await startTestProxy(t, {
    BEARER_PROXY_SERVICE_ACCOUNT_FILE: forged,
    BEARER_PROXY_SCOPE: 'https://www.googleapis.com/auth/cloud-platform',
    BEARER_PROXY_UPSTREAM: google.url,
    BEARER_PROXY_PORT: '0'
  }, { backoffMs: 60_000 })
  const answer = await request(`${url}/x`)
  t.equal(answer.statusCode, 503)
  t.match(await answer.body.json(), { error: 'token_unavailable', message: /answered 400 invalid_grant \(Invalid JWT Signature\.\)/ })
  t.equal(google.served.length, 0)

  const problems = (file: string, extra: Record<string, string> = {}): string => {
    try {
      loadConfig({ env: { BEARER_PROXY_SERVICE_ACCOUNT_FILE: file, BEARER_PROXY_UPSTREAM: 'https://storage.googleapis.com', ...extra }, envFile: '/dev/null' })
      return ''
    } catch (error) {
      return (error as ConfigError).problems.join('\n')
    }
  }
  t.match(problems(write('not-json.json', 'private_key: x')), /^BEARER_PROXY_SERVICE_ACCOUNT_FILE: is not JSON/)
  t.match(problems(write('partial.json', JSON.stringify({ client_email: 'a@b', private_key: rsa.pem }))), /^BEARER_PROXY_SERVICE_ACCOUNT_FILE: is not a service account key file: client_email, private_key and token_uri are required$/)
  const bad = problems(write('bad-key.json', JSON.stringify({ ...account, private_key: 'MIIE-not-a-key' })))
  t.match(bad, /^BEARER_PROXY_SERVICE_ACCOUNT_FILE: its private_key is not a private key/)
  t.notMatch(bad, /MIIE/)
  t.match(problems(google.keyFile, { BEARER_PROXY_CLIENT_ID: 'someone' }), /BEARER_PROXY_CLIENT_ID: does nothing with BEARER_PROXY_SERVICE_ACCOUNT_FILE/)
  t.match(problems(google.keyFile, { BEARER_PROXY_GRANT: 'client_credentials', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's' }), /BEARER_PROXY_SERVICE_ACCOUNT_FILE: does nothing with AUTH=oidc GRANT=client_credentials/)
  t.equal(problems(google.keyFile), '', 'the file alone is a configuration')
})

t.test('config/keycloak-signed-jwt.env and config/google-service-account.env, filled in, get tokens through the CLI', async (t) => {
  const { readFileSync } = await import('node:fs')
  const example = (name: string): string => readFileSync(new URL(`../config/${name}`, import.meta.url), 'utf8')
  const idp = await signedIdp(t)
  const keyFile = write('client-key.pem', rsa.pem)
  const keycloak = write('keycloak.env', example('keycloak-signed-jwt.env')
    .replace('https://keycloak.example.com/realms/my-realm', idp.issuer)
    .replaceAll('my-service-client', 'signer')
    .replace('/run/secrets/client-key.pem', keyFile)
    .replace('# BEARER_PROXY_CLIENT_KEY_ID=my-key-1', 'BEARER_PROXY_CLIENT_KEY_ID=rsa-1'))
  const signed = await runCli(['token', '--env-file', keycloak], {}, { cwd: cleanDirectory() })
  t.equal(signed.code, 0, signed.stderr)
  t.ok(signed.stdout.trim().split('.').length === 3, 'a JWT access token')
  t.match(idp.assertions.at(-1)?.header, { kid: 'rsa-1' })

  const google = await startGoogle(t)
  const account = write('google.env', example('google-service-account.env').replace('/run/secrets/service-account.json', google.keyFile))
  const granted = await runCli(['token', '--env-file', account], {}, { cwd: cleanDirectory() })
  t.equal(granted.code, 0, granted.stderr)
  t.equal(google.assertions.at(-1)?.accepted, true)
})

t.test('serve: a rotated key file starts a reload; the set gets a token signed with the new key at once', async (t) => {
  const idp = await signedIdp(t)
  const api = await startApiOf(t, idp)
  const keyFile = write('serve-key.jwk', JSON.stringify(rsa.jwk))
  const envFile = write('serve.env', `BEARER_PROXY_TOKEN_URL=${idp.tokenUrl}\nBEARER_PROXY_CLIENT_ID=signer\nBEARER_PROXY_CLIENT_AUTH=private_key_jwt\nBEARER_PROXY_CLIENT_KEY_FILE=${keyFile}\nBEARER_PROXY_UPSTREAM=${api.url}\nBEARER_PROXY_PORT=0\n`)
  const child = spawnCli(['serve', '--env-file', envFile], {})
  t.teardown(() => { child.kill('SIGKILL') })
  await waitForLine(child, /"event":"ready"/)
  t.match(idp.assertions.at(-1)?.header, { kid: 'rsa-1' })
  // Listened for before the rotation: the reload's line and the new token's may come in one chunk.
  const fetchedAgain = waitForLine(child, /"event":"token_fetched"/, 15_000)
  const reloadedLine = waitForLine(child, /"event":"reloaded"/, 15_000)
  write('serve-key.jwk', JSON.stringify(rsaNext.jwk))
  const reloaded = JSON.parse(await reloadedLine) as { sets: { changed: string[] }, cause: string }
  t.same(reloaded.sets.changed, ['default'])
  t.match(reloaded.cause, /serve-key\.jwk changed/)
  await fetchedAgain
  t.match(idp.assertions.at(-1)?.header, { kid: 'rsa-2' }, 'the new token was asked for with the new key')
})
