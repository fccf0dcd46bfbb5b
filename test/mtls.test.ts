import { createHash, X509Certificate } from 'node:crypto'
import { mkdtempSync, renameSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { ConfigError, loadConfig } from '../src/config.js'
import { assertNoSecret } from './helpers/secrets.js'
import { runCli, startApiOf, startIdentity, startTestProxy, startTokenManager } from './helpers/stack.js'
import { makeClientCertificate, makePki, makeSelfSignedCertificate, startMtlsApi } from './helpers/tls.js'

const pki = makePki()
const client = makeClientCertificate(pki, 'bearer-proxy-client')
const other = makePki()
const stranger = makeClientCertificate(other, 'bearer-proxy-client')
const selfSigned = makeSelfSignedCertificate('self-signed-client')
const SECRET = 'mtls-Client-Secret-7070'
const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-mtls-'))
/** Written to a temporary name and renamed over, as a rotated Secret is. */
const write = (name: string, text: string): string => {
  writeFileSync(join(dir, `.${name}.tmp`), text, { mode: 0o600 })
  renameSync(join(dir, `.${name}.tmp`), join(dir, name))
  return join(dir, name)
}

async function mtlsIdp (t: Parameters<typeof startIdentity>[0]): ReturnType<typeof startIdentity> {
  const { readFileSync } = await import('node:fs')
  return await startIdentity(t, {
    accessTokenTtl: 600,
    tls: { key: pki.key, cert: pki.cert, ca: readFileSync(pki.caFile, 'utf8') },
    clients: [
      { clientId: 'mtls-client', authMethod: 'tls_client_auth', subjectDn: 'CN=bearer-proxy-client' },
      { clientId: 'secret-client', clientSecret: SECRET },
      { clientId: 'self-signed', authMethod: 'self_signed_tls_client_auth', jwks: { keys: [selfSigned.jwk] } },
      { clientId: 'cert-signer', authMethod: 'private_key_jwt', jwks: { keys: [new X509Certificate(client.cert).publicKey.export({ format: 'jwk' })] } }
    ]
  })
}

t.test('CLIENT_AUTH=tls_client_auth: the certificate proves the client to oidc-provider, only client_id is sent; a certificate it does not trust is refused', async (t) => {
  const idp = await mtlsIdp(t)
  const api = await startApiOf(t, idp)
  const env = (certificate: typeof client, clientId = 'mtls-client', auth = 'tls_client_auth'): Record<string, string> => ({
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: clientId,
    BEARER_PROXY_CLIENT_AUTH: auth,
    BEARER_PROXY_CLIENT_CERT_FILE: certificate.certFile,
    BEARER_PROXY_CLIENT_KEY_FILE: certificate.keyFile,
    BEARER_PROXY_CA_FILE: pki.caFile,
    BEARER_PROXY_UPSTREAM: api.url,
    BEARER_PROXY_PORT: '0',
    BEARER_PROXY_LOG_LEVEL: 'trace'
  })
  const { url, logs } = await startTestProxy(t, env(client))
  const answer = await request(`${url}/items`)
  t.equal(answer.statusCode, 200)
  await answer.body.dump()
  t.equal(api.seen.at(-1)?.sub, 'mtls-client', 'a token issued to the certificate\'s client')

  // Same subject, another CA: the provider does not trust it.
  const refused = await startTestProxy(t, env(stranger), { backoffMs: 60_000 })
  const failed = await request(`${refused.url}/items`)
  t.equal(failed.statusCode, 503)
  const body = await failed.body.text()
  t.match(JSON.parse(body), { error: 'token_unavailable', message: /answered 401 invalid_client/ })
  const keys = [client.key, stranger.key].flatMap((key) => key.split('\n').filter((line) => line.length > 40))
  assertNoSecret(t, 'logs', logs.text + refused.logs.text, keys)
  assertNoSecret(t, 'answer', body, keys)

  const check = await runCli(['check'], env(client))
  t.equal(check.code, 0, check.stderr)

  // self_signed_tls_client_auth: a certificate no CA signed, registered with the client (its x5c).
  const self = await startTestProxy(t, env(selfSigned, 'self-signed', 'self_signed_tls_client_auth'))
  const selfAnswer = await request(`${self.url}/items`)
  t.equal(selfAnswer.statusCode, 200)
  await selfAnswer.body.dump()
  t.equal(api.seen.at(-1)?.sub, 'self-signed')

  // Another self-signed certificate than the one registered: refused.
  const unregistered = makeSelfSignedCertificate('self-signed-client')
  const impostor = await startTestProxy(t, env(unregistered, 'self-signed', 'self_signed_tls_client_auth'), { backoffMs: 60_000 })
  const refusedSelf = await request(`${impostor.url}/items`)
  t.equal(refusedSelf.statusCode, 503)
  t.match(await refusedSelf.body.json(), { error: 'token_unavailable', message: /answered 401 invalid_client/ })
})

t.test('private_key_jwt with CLIENT_CERT_FILE: the assertion names the certificate by its thumbprints (x5t, x5t#S256), as Entra ID wants', async (t) => {
  const idp = await mtlsIdp(t)
  const { tokens } = startTokenManager(t, {
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: 'cert-signer',
    BEARER_PROXY_CLIENT_AUTH: 'private_key_jwt',
    BEARER_PROXY_CLIENT_KEY_FILE: client.keyFile,
    BEARER_PROXY_CLIENT_CERT_FILE: client.certFile,
    BEARER_PROXY_CA_FILE: pki.caFile
  })
  await tokens.get()
  const der = new X509Certificate(client.cert).raw
  t.same(idp.assertions.at(-1)?.header, {
    alg: 'ES256',
    typ: 'JWT',
    x5t: createHash('sha1').update(der).digest('base64url'),
    'x5t#S256': createHash('sha256').update(der).digest('base64url')
  })
})

t.test('UPSTREAM_CLIENT_CERT: the certificate goes to the upstreams too; without it an API that requires one is 502; a reload picks up a rotated certificate', async (t) => {
  const idp = await mtlsIdp(t)
  const api = await startMtlsApi(t, pki)
  const certFile = write('client.pem', client.cert)
  const keyFile = write('client.key', client.key)
  const env = (extra: Record<string, string> = {}): Record<string, string> => ({
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: 'secret-client',
    BEARER_PROXY_CLIENT_SECRET: SECRET,
    BEARER_PROXY_CLIENT_CERT_FILE: certFile,
    BEARER_PROXY_CLIENT_KEY_FILE: keyFile,
    BEARER_PROXY_CA_FILE: pki.caFile,
    BEARER_PROXY_UPSTREAM: api.url,
    BEARER_PROXY_PORT: '0',
    ...extra
  })
  const without = await startTestProxy(t, env())
  const refused = await request(`${without.url}/x`)
  t.equal(refused.statusCode, 502, 'the API refused the handshake without a certificate')
  t.match(await refused.body.json(), { error: 'upstream_unreachable' })
  t.equal(api.seen.length, 0)

  const { url, proxy } = await startTestProxy(t, env({ BEARER_PROXY_UPSTREAM_CLIENT_CERT: 'true' }))
  const answer = await request(`${url}/x`)
  t.equal(answer.statusCode, 200)
  t.same(await answer.body.json(), { cn: 'bearer-proxy-client' })
  t.match(api.seen.at(-1)?.authorization, /^Bearer /)

  // Rotated files: the reload sees the set changed and presents the new certificate from then on.
  const rotated = makeClientCertificate(pki, 'bearer-proxy-client-rotated')
  write('client.pem', rotated.cert)
  write('client.key', rotated.key)
  const summary = await proxy.reconfigure(loadConfig({ env: env({ BEARER_PROXY_UPSTREAM_CLIENT_CERT: 'true' }), envFile: '/dev/null' }))
  t.same(summary.sets.changed, ['default'])
  const after = await request(`${url}/y`)
  t.same(await after.body.json(), { cn: 'bearer-proxy-client-rotated' })

  // Checked, then broken before the swap: the reload is refused and the running configuration keeps serving.
  const checked = loadConfig({ env: env({ BEARER_PROXY_UPSTREAM_CLIENT_CERT: 'true' }), envFile: '/dev/null' })
  write('client.pem', 'no longer a certificate')
  await t.rejects(proxy.reconfigure(checked), { name: 'KeyError' })
  const still = await request(`${url}/z`)
  t.same(await still.body.json(), { cn: 'bearer-proxy-client-rotated' })
})

t.test('a certificate that cannot be used stops the start, naming the setting', async (t) => {
  const problems = (env: Record<string, string>): string => {
    try {
      loadConfig({ env: { BEARER_PROXY_TOKEN_URL: 'https://idp.example/token', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_UPSTREAM: 'https://api.example', ...env }, envFile: '/dev/null' })
      return ''
    } catch (error) {
      return (error as ConfigError).problems.join('\n')
    }
  }
  const tls = { BEARER_PROXY_CLIENT_AUTH: 'tls_client_auth' }
  t.match(problems({ ...tls, BEARER_PROXY_CLIENT_CERT_FILE: client.certFile, BEARER_PROXY_CLIENT_KEY_FILE: stranger.keyFile }), /^BEARER_PROXY_CLIENT_CERT_FILE: is not the certificate of the key in CLIENT_KEY_FILE$/)
  t.match(problems({ ...tls, BEARER_PROXY_CLIENT_CERT_FILE: write('garbage.pem', 'not a certificate'), BEARER_PROXY_CLIENT_KEY_FILE: client.keyFile }), /^BEARER_PROXY_CLIENT_CERT_FILE: is not a PEM certificate$/)
  t.match(problems({ ...tls, BEARER_PROXY_CLIENT_CERT_FILE: client.certFile, BEARER_PROXY_CLIENT_KEY_FILE: write('bad.key', 'nope') }), /^BEARER_PROXY_CLIENT_KEY_FILE: is not a private key/)
  t.match(problems({ ...tls, BEARER_PROXY_CLIENT_CERT_FILE: join(dir, 'missing.pem'), BEARER_PROXY_CLIENT_KEY_FILE: client.keyFile }), /^BEARER_PROXY_CLIENT_CERT_FILE: cannot read .*missing\.pem \(ENOENT\)$/)
  t.match(problems(tls), /BEARER_PROXY_CLIENT_CERT_FILE: required for AUTH=oidc GRANT=client_credentials CLIENT_AUTH=tls_client_auth/)
  t.match(problems({ ...tls, BEARER_PROXY_CLIENT_CERT_FILE: client.certFile }), /BEARER_PROXY_CLIENT_KEY_FILE: required/)
  t.match(problems({ ...tls, BEARER_PROXY_CLIENT_CERT_FILE: client.certFile, BEARER_PROXY_CLIENT_KEY_FILE: client.keyFile, BEARER_PROXY_CLIENT_SECRET: 's' }), /BEARER_PROXY_CLIENT_SECRET: does nothing/)
  t.match(problems({ BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_UPSTREAM_CLIENT_CERT: 'true' }), /BEARER_PROXY_UPSTREAM_CLIENT_CERT: does nothing .*only CLIENT_CERT_FILE reads it/)
  t.equal(problems({ ...tls, BEARER_PROXY_CLIENT_CERT_FILE: client.certFile, BEARER_PROXY_CLIENT_KEY_FILE: client.keyFile }), '')
  t.match(problems({ ...tls, BEARER_PROXY_CLIENT_CERT_FILE: client.certFile, BEARER_PROXY_CLIENT_KEY_FILE: client.keyFile, BEARER_PROXY_TOKEN_URL: 'http://idp.example/token' }),
    /^BEARER_PROXY_CLIENT_AUTH: tls_client_auth proves the client by its TLS certificate, which a plain http token endpoint never asks for \(http:\/\/idp\.example\); use https$/)
  const text = problems({ ...tls, BEARER_PROXY_CLIENT_CERT_FILE: client.certFile, BEARER_PROXY_CLIENT_KEY_FILE: stranger.keyFile })
  t.notMatch(text, /BEGIN|MII/)
})
