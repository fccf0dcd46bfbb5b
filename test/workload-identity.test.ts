import { readFileSync } from 'node:fs'
import { decodeJwt } from 'jose'
import t from 'tap'
import { request } from 'undici'
import { FakeClock } from './helpers/clock.js'
import { RUNAI, runaiEnv, startRunai } from './helpers/emulators.js'
import { CLIENT, cleanDirectory, runCli, startApiOf, startIdentity, startTestProxy } from './helpers/stack.js'
import { assertNoSecret, fragments } from './helpers/secrets.js'
import { startTokenEndpoint, type TokenEndpoint } from './helpers/token-endpoint.js'
import { ACCOUNT, projectedToken, startServiceAccountIssuer } from './helpers/workload.js'

/**
 * No secret in the pod: a workload's own identity token, a file the platform writes
 * and rotates, as the credential. The token services here check what the real ones
 * check, and the tokens are signed by a Kubernetes-like service account issuer.
 */

const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt'
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'

/** A proxy that exchanges the token in `file` at oidc-provider `idp` (a confidential client), in front of `upstream`. */
function exchangeAt (idp: { tokenUrl: string }, file: string, upstream: string): Record<string, string> {
  return {
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
    BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret,
    BEARER_PROXY_GRANT: 'token_exchange',
    BEARER_PROXY_SUBJECT_TOKEN_FILE: file,
    BEARER_PROXY_UPSTREAM: upstream,
    BEARER_PROXY_PORT: '0'
  }
}

/** Every platform token handed out: none may appear in what the proxy prints or answers. */
const handedOut: string[] = []

t.test('RFC 8693 at oidc-provider: the projected token exchanged, the result verified upstream; the kubelet\'s rotation is read at the next token request, no restart, no failed request', async (t) => {
  const cluster = await startServiceAccountIssuer(t)
  const exchanged: string[] = []
  const idp = await startIdentity(t, {
    accessTokenTtl: 600,
    tokenExchange: async (subjectToken, type) => {
      if (type !== JWT_TYPE) throw new Error(`unexpected type ${type}`)
      exchanged.push(subjectToken)
      return await cluster.verify(subjectToken, 'bearer-proxy')
    }
  })
  const api = await startApiOf(t, idp)
  const first = await cluster.sign('bearer-proxy', 3600)
  handedOut.push(first)
  const volume = projectedToken(first)
  const clock = new FakeClock()
  const { url, proxy, logs } = await startTestProxy(t, { ...exchangeAt(idp, volume.path, api.url), BEARER_PROXY_LOG_LEVEL: 'trace' }, { clock })
  const answer = await request(`${url}/v1/whoami`)
  t.equal(answer.statusCode, 200)
  await answer.body.dump()
  t.equal(api.seen.at(-1)?.sub, ACCOUNT.subject, 'the upstream verified a token issued to the service account')
  t.same(exchanged, [first], 'the projected token was the subject token')

  // The kubelet rotates the token; the next token request (a renewal, at 80% of 600 s) carries the new one.
  const second = await cluster.sign('bearer-proxy', 3600)
  handedOut.push(second)
  volume.rotate(second)
  const renewed = new Promise((resolve) => proxy.tokens.once('fetch', resolve))
  clock.advance(481_000)
  await renewed
  t.same(exchanged, [first, second], 'the renewal read the rotated file')
  const after = await request(`${url}/v1/whoami`)
  t.equal(after.statusCode, 200, 'no failed request')
  await after.body.dump()
  t.equal(logs.events('token_failed').length, 0)
  t.equal(readFileSync(volume.path, 'utf8'), second, 'the platform\'s file is as the kubelet left it: never written, moved or deleted')
  for (const token of handedOut) t.notOk(logs.text.includes(token), 'no platform token in the log, at trace')
})

t.test('a Google-STS-shaped endpoint: exactly its fields, no client authentication, a result typed as an access token', async (t) => {
  const cluster = await startServiceAccountIssuer(t)
  const audience = '//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/k8s'
  const sts = await startTokenEndpoint(t, async (call) => {
    const fields = call.fields
    const expected = { grant_type: EXCHANGE, audience, scope: 'https://www.googleapis.com/auth/cloud-platform', requested_token_type: 'urn:ietf:params:oauth:token-type:access_token', subject_token_type: JWT_TYPE }
    const wrong = Object.entries(expected).find(([name, value]) => fields[name] !== value)
    if (wrong !== undefined || Object.keys(fields).length !== 6) return { status: 400, body: { error: 'invalid_request', error_description: `bad ${wrong?.[0] ?? 'fields'}` } }
    // The pool's provider trusts the cluster's issuer, for its own name as the audience.
    if (await cluster.verify(String(fields.subject_token), audience).catch(() => undefined) !== ACCOUNT.subject) return { status: 400, body: { error: 'invalid_grant', error_description: 'The token is invalid' } }
    return { body: { access_token: 'ya29.federated-Access-7781', issued_token_type: 'urn:ietf:params:oauth:token-type:access_token', token_type: 'Bearer', expires_in: 3599 } }
  })
  const token = await cluster.sign(audience, 3600)
  handedOut.push(token)
  const volume = projectedToken(token)
  const env = {
    BEARER_PROXY_TOKEN_URL: `${sts.url}/v1/token`,
    BEARER_PROXY_GRANT: 'token_exchange',
    BEARER_PROXY_SUBJECT_TOKEN_FILE: volume.path,
    BEARER_PROXY_AUDIENCE: audience,
    BEARER_PROXY_SCOPE: 'https://www.googleapis.com/auth/cloud-platform',
    BEARER_PROXY_REQUESTED_TOKEN_TYPE: 'access_token',
    BEARER_PROXY_ALLOW_HTTP_TOKEN_ENDPOINT: 'true'
  }
  const result = await runCli(['token'], env, { cwd: cleanDirectory() })
  t.equal(result.code, 0, result.stderr)
  t.equal(result.stdout.trim(), 'ya29.federated-Access-7781')
  t.match(sts.calls[0]?.fields, { subject_token: token })
  t.notOk('client_id' in (sts.calls[0]?.fields ?? {}), 'no client')
  t.notOk(sts.calls[0]?.headers.authorization, 'no client authentication')
})

/** Microsoft Entra ID's token endpoint for a workload identity: client_credentials, the client's id and a federated assertion it checks. */
async function startEntra (t: Parameters<typeof startServiceAccountIssuer>[0], verify: (assertion: string) => Promise<string>): Promise<TokenEndpoint> {
  return await startTokenEndpoint(t, async (call) => {
    const fields = call.fields
    const grant = fields.grant_type === 'client_credentials' || (fields.grant_type === 'refresh_token' && fields.refresh_token === 'entra-Refresh-1')
    if (!grant || fields.client_id !== 'entra-app-id' || fields.scope !== 'api://runai/.default' || fields.client_assertion_type !== ASSERTION_TYPE) {
      return { status: 400, body: { error: 'invalid_request', error_description: 'AADSTS900144' } }
    }
    // The federated credential: this issuer, this subject, the audience Entra asks for.
    if (await verify(String(fields.client_assertion)).catch(() => undefined) !== ACCOUNT.subject) {
      return { status: 401, body: { error: 'invalid_client', error_description: 'AADSTS700211: No matching federated identity record found' } }
    }
    return { body: { token_type: 'Bearer', expires_in: 3599, access_token: `entra-Access-${call.raw.length}`, refresh_token: 'entra-Refresh-1' } }
  })
}

t.test('CLIENT_ASSERTION_FILE: Entra\'s workload identity takes the projected token as the client\'s assertion, on every token request, renewals included', async (t) => {
  const cluster = await startServiceAccountIssuer(t)
  const entra = await startEntra(t, async (assertion) => await cluster.verify(assertion, 'api://AzureADTokenExchange'))
  const token = await cluster.sign('api://AzureADTokenExchange', 3600)
  handedOut.push(token)
  const volume = projectedToken(token)
  const echo = await startTokenEndpoint(t, () => ({ body: { ok: true } }))
  const clock = new FakeClock()
  const { url, proxy } = await startTestProxy(t, {
    BEARER_PROXY_TOKEN_URL: `${entra.url}/tenant/oauth2/v2.0/token`,
    BEARER_PROXY_CLIENT_ID: 'entra-app-id',
    BEARER_PROXY_CLIENT_ASSERTION_FILE: volume.path,
    BEARER_PROXY_SCOPE: 'api://runai/.default',
    BEARER_PROXY_UPSTREAM: echo.url,
    BEARER_PROXY_PORT: '0'
  }, { clock })
  const answer = await request(`${url}/x`)
  t.equal(answer.statusCode, 200)
  await answer.body.dump()
  t.equal(entra.calls.length, 1)
  t.notOk('client_secret' in (entra.calls[0]?.fields ?? {}), 'no secret anywhere')
  const renewed = new Promise((resolve) => proxy.tokens.once('fetch', resolve))
  clock.advance(3000_000)
  await renewed
  t.equal(entra.calls.length, 2, 'renewed')
  t.match(entra.calls[1]?.fields, { grant_type: 'refresh_token', client_assertion: token }, 'the refresh carried the assertion too')
})

t.test('CLIENT_ASSERTION_FILE without a client id: Keycloak\'s federated client authentication, the assertion names the client', async (t) => {
  const cluster = await startServiceAccountIssuer(t)
  const keycloak = await startTokenEndpoint(t, async (call) => {
    const { fields } = call
    if (fields.grant_type !== 'client_credentials' || fields.client_assertion_type !== ASSERTION_TYPE || 'client_id' in fields) return { status: 400, body: { error: 'invalid_request' } }
    const subject = await cluster.verify(String(fields.client_assertion), 'https://keycloak.example/realms/runai').catch(() => undefined)
    return subject === undefined ? { status: 401, body: { error: 'invalid_client' } } : { body: { access_token: `kc-for-${subject.replace(/:/g, '.')}`, expires_in: 300, token_type: 'Bearer' } }
  })
  const token = await cluster.sign('https://keycloak.example/realms/runai', 3600)
  handedOut.push(token)
  const result = await runCli(['token'], {
    BEARER_PROXY_TOKEN_URL: `${keycloak.url}/realms/runai/protocol/openid-connect/token`,
    BEARER_PROXY_CLIENT_ASSERTION_FILE: projectedToken(token).path
  }, { cwd: cleanDirectory() })
  t.equal(result.code, 0, result.stderr)
  t.equal(result.stdout.trim(), `kc-for-${ACCOUNT.subject.replace(/:/g, '.')}`)
})

t.test('GRANT=jwt_bearer with ASSERTION_FILE: an assertion someone else signed is the grant (RFC 7523 §2.1), no key of ours', async (t) => {
  const cluster = await startServiceAccountIssuer(t)
  const server = await startTokenEndpoint(t, async (call) => {
    const { fields } = call
    if (fields.grant_type !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') return { status: 400, body: { error: 'unsupported_grant_type' } }
    const subject = await cluster.verify(String(fields.assertion), 'https://idp.example').catch(() => undefined)
    return subject === undefined ? { status: 400, body: { error: 'invalid_grant' } } : { body: { access_token: 'granted-For-Assertion-4410', expires_in: 300, token_type: 'Bearer' } }
  })
  const token = await cluster.sign('https://idp.example', 3600)
  handedOut.push(token)
  const result = await runCli(['token'], {
    BEARER_PROXY_TOKEN_URL: `${server.url}/token`,
    BEARER_PROXY_GRANT: 'jwt_bearer',
    BEARER_PROXY_CLIENT_ID: 'public-cli',
    BEARER_PROXY_ASSERTION_FILE: projectedToken(token).path
  }, { cwd: cleanDirectory() })
  t.equal(result.code, 0, result.stderr)
  t.equal(result.stdout.trim(), 'granted-For-Assertion-4410')
  t.same(Object.keys(server.calls[0]?.fields ?? {}).sort(), ['assertion', 'client_id', 'grant_type'])
})

t.test('Run:ai external_token_exchange: /api/v2/token as a form, and /api/v1/token as JSON on a control plane without v2', async (t) => {
  const cluster = await startServiceAccountIssuer(t)
  for (const generation of ['v2', 'v1'] as const) {
    const runai = await startRunai(t, { generation, external: async (token) => await cluster.verify(token, 'runai') })
    const token = await cluster.sign('runai', 3600)
    handedOut.push(token)
    const env = runaiEnv(runai, { BEARER_PROXY_CLIENT_ID: '', BEARER_PROXY_CLIENT_SECRET: '', BEARER_PROXY_GRANT: 'token_exchange', BEARER_PROXY_SUBJECT_TOKEN_FILE: projectedToken(token).path })
    delete (env as Record<string, string | undefined>).BEARER_PROXY_CLIENT_ID
    delete (env as Record<string, string | undefined>).BEARER_PROXY_CLIENT_SECRET
    const result = await runCli(['token'], env, { cwd: cleanDirectory() })
    t.equal(result.code, 0, `${generation}: ${result.stderr}`)
    t.equal(decodeJwt(result.stdout.trim()).sub, ACCOUNT.subject, `${generation}: a token for the workload`)
    const asked = runai.calls.filter((call) => call.path.startsWith('/api/'))
    if (generation === 'v2') t.match(asked[0]?.body, { grant_type: 'external_token_exchange', external_token: token })
    else t.match(asked.at(-1)?.body, { grantType: 'external_token_exchange', externalToken: token })
    t.notOk(JSON.stringify(asked.map((call) => call.body)).includes(RUNAI.client.secret))
  }
})

t.test('the platform\'s file missing, empty, not a JWT or expired: 503 naming the setting, the file and why, /-/ready the same, never its content; recovered when it is good again; missing at start: exit 2', async (t) => {
  const cluster = await startServiceAccountIssuer(t)
  const idp = await startIdentity(t, { accessTokenTtl: 600, tokenExchange: async (token) => await cluster.verify(token, 'bearer-proxy') })
  const api = await startApiOf(t, idp)
  const good = await cluster.sign('bearer-proxy', 3600)
  handedOut.push(good)
  const volume = projectedToken(good)
  const env = exchangeAt(idp, volume.path, api.url)
  const missing = await runCli(['check'], { ...env, BEARER_PROXY_SUBJECT_TOKEN_FILE: `${volume.path}-absent` }, { cwd: cleanDirectory() })
  t.equal(missing.code, 2)
  t.match(missing.stderr, /BEARER_PROXY_SUBJECT_TOKEN_FILE: cannot read .*token-absent \(ENOENT\)/)

  const { url, proxy } = await startTestProxy(t, env)
  await proxy.tokens.get()
  const expired = await cluster.sign('bearer-proxy', -60)
  handedOut.push(expired)
  const faults: Array<[() => void, RegExp]> = [
    [() => { volume.remove() }, /BEARER_PROXY_SUBJECT_TOKEN_FILE: \S+ cannot be read \(ENOENT\); no token request was sent/],
    [() => { volume.overwrite('') }, /BEARER_PROXY_SUBJECT_TOKEN_FILE: \S+ is empty/],
    [() => { volume.overwrite('not-a-Jwt-Value-5521') }, /BEARER_PROXY_SUBJECT_TOKEN_FILE: \S+ does not hold a JWT/],
    [() => { volume.rotate(expired) }, /BEARER_PROXY_SUBJECT_TOKEN_FILE: \S+ holds a token that expired at \d{4}-\d\d-\d\dT[\d:.]+Z/]
  ]
  for (const [fault, message] of faults) {
    fault()
    proxy.tokens.drop(proxy.tokens.current() as NonNullable<ReturnType<typeof proxy.tokens.current>>)
    const refused = await request(`${url}/v1/x`)
    t.equal(refused.statusCode, 503)
    const body = await refused.body.text()
    t.match(JSON.parse(body), { error: 'token_unavailable', message })
    const ready = await request(`${url}/-/ready`)
    t.equal(ready.statusCode, 503)
    const readyBody = await ready.body.text()
    t.match(JSON.parse(readyBody), { reason: message })
    for (const text of [body, readyBody]) t.notOk(text.includes('not-a-Jwt-Value-5521') || text.includes(expired) || text.includes(good), 'never the content')
    // Good again: the next request recovers, without a restart.
    const fresh = await cluster.sign('bearer-proxy', 3600)
    handedOut.push(fresh)
    volume.rotate(fresh)
    const recovered = await request(`${url}/v1/x`)
    t.equal(recovered.statusCode, 200, 'recovered by itself')
    await recovered.body.dump()
  }
})

t.test('the token granted for a platform token is renewed before that token expires, whatever its own lifetime', async (t) => {
  const cluster = await startServiceAccountIssuer(t)
  const server = await startTokenEndpoint(t, () => ({ body: { access_token: 'long-Lived-Derived-9091', expires_in: 86_400, token_type: 'Bearer' } }))
  const token = await cluster.sign('sts', 600)
  handedOut.push(token)
  const { proxy } = await startTestProxy(t, {
    BEARER_PROXY_TOKEN_URL: `${server.url}/token`,
    BEARER_PROXY_GRANT: 'token_exchange',
    BEARER_PROXY_SUBJECT_TOKEN_FILE: projectedToken(token).path,
    BEARER_PROXY_UPSTREAM: server.url,
    BEARER_PROXY_PORT: '0'
  })
  const held = await proxy.tokens.get()
  const subjectExpiry = (decodeJwt(token).exp as number) * 1000
  t.ok(held.expiresAt <= subjectExpiry, 'held no longer than the subject token lasts')
  t.ok(held.renewAt < subjectExpiry, 'renewed before it expires')
})

t.test('settings: the grant needs its file, short token type names, and nothing silently ignored', async (t) => {
  const { loadConfig } = await import('../src/config.js')
  const volume = projectedToken('x')
  const base = { BEARER_PROXY_TOKEN_URL: 'https://sts.example/token', BEARER_PROXY_GRANT: 'token_exchange' }
  const problems = (env: Record<string, string>): string => {
    try {
      loadConfig({ env, envFile: '/dev/null', forwarding: false })
      return ''
    } catch (error) {
      return (error as { problems: string[] }).problems.join('\n')
    }
  }
  t.match(problems(base), /BEARER_PROXY_SUBJECT_TOKEN_FILE: required for AUTH=oidc GRANT=token_exchange/)
  const config = loadConfig({ env: { ...base, BEARER_PROXY_SUBJECT_TOKEN_FILE: volume.path, BEARER_PROXY_SUBJECT_TOKEN_TYPE: 'id_token' }, envFile: '/dev/null', forwarding: false })
  t.match(config.tokenSettings.credentials, { grant: 'token_exchange', subjectType: 'urn:ietf:params:oauth:token-type:id_token', client: undefined })
  t.match(problems({ ...base, BEARER_PROXY_SUBJECT_TOKEN_FILE: volume.path, BEARER_PROXY_SUBJECT_TOKEN_TYPE: 'saml' }), /BEARER_PROXY_SUBJECT_TOKEN_TYPE: jwt, id_token, access_token or a token type URN/)
  t.match(problems({ BEARER_PROXY_TOKEN_URL: 'https://idp.example/token', BEARER_PROXY_GRANT: 'client_credentials', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_SUBJECT_TOKEN_FILE: volume.path }), /BEARER_PROXY_SUBJECT_TOKEN_FILE: does nothing with AUTH=oidc GRANT=client_credentials/)
  for (const [setting, grant] of [['SUBJECT_TOKEN_FILE', 'token_exchange'], ['ASSERTION_FILE', 'jwt_bearer']]) {
    const implied = loadConfig({ env: { BEARER_PROXY_TOKEN_URL: 'https://idp.example/token', [`BEARER_PROXY_${setting}`]: volume.path }, envFile: '/dev/null', forwarding: false })
    t.equal(implied.tokenSettings.credentials.grant, grant, `${setting} alone means GRANT=${grant}`)
  }
  t.match(problems({ BEARER_PROXY_TOKEN_URL: 'https://idp.example/token', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_CLIENT_ASSERTION_FILE: volume.path }), /BEARER_PROXY_CLIENT_SECRET: does nothing/)
  t.match(problems({ BEARER_PROXY_TOKEN_URL: 'https://idp.example/token', BEARER_PROXY_CLIENT_AUTH: 'client_secret_basic', BEARER_PROXY_CLIENT_ASSERTION_FILE: volume.path }), /BEARER_PROXY_CLIENT_AUTH: does nothing with BEARER_PROXY_CLIENT_ASSERTION_FILE/)
})

t.test('a token service that echoes the subject token and the assertion in its error: neither reaches the log at trace, the error body or /-/ready, in any spelling', async (t) => {
  const cluster = await startServiceAccountIssuer(t)
  const echoing = await startTokenEndpoint(t, (call) => ({ status: 400, body: { error: 'invalid_grant', error_description: `refused ${String(call.fields.subject_token)} with ${String(call.fields.client_assertion)}` } }))
  const [subject, assertion] = [await cluster.sign('sts', 3600), await cluster.sign('client', 3600)]
  const { url, logs } = await startTestProxy(t, {
    BEARER_PROXY_TOKEN_URL: `${echoing.url}/token`,
    BEARER_PROXY_GRANT: 'token_exchange',
    BEARER_PROXY_SUBJECT_TOKEN_FILE: projectedToken(subject).path,
    BEARER_PROXY_CLIENT_ASSERTION_FILE: projectedToken(assertion).path,
    BEARER_PROXY_UPSTREAM: echoing.url,
    BEARER_PROXY_PORT: '0',
    BEARER_PROXY_LOG_LEVEL: 'trace'
  })
  const refused = await request(`${url}/x`)
  t.equal(refused.statusCode, 503)
  const body = await refused.body.text()
  t.match(body, /answered 400 invalid_grant/)
  const ready = await (await request(`${url}/-/ready`)).body.text()
  t.match(echoing.calls[0]?.fields, { subject_token: subject, client_assertion: assertion }, 'both were sent')
  const secrets = fragments([...handedOut, subject, assertion])
  assertNoSecret(t, 'log at trace', logs.text, secrets)
  assertNoSecret(t, 'error body and /-/ready', `${body}\n${ready}`, secrets)
  t.ok(logs.text.split('\n').length > 5, 'the log was written')
})
