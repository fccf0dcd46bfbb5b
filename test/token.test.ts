import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { decodeJwt } from 'jose'
import t from 'tap'
import { request } from 'undici'
import { startIdp } from '../demo/idp.js'
import { Secret } from '../src/secret.js'
import { checkBearer } from '../src/oauth/token-client.js'
import type { Scripted } from './helpers/token-endpoint.js'
import { CLIENT, startIdentity, startTestProxy, startTokenManager, USER, afterFetch } from './helpers/stack.js'
import { jwt, startTokenEndpoint } from './helpers/token-endpoint.js'
import { FakeClock } from './helpers/clock.js'
import { startEcho } from './helpers/upstream.js'

const oidcEnv = (tokenUrl: string, extra: Record<string, string> = {}): Record<string, string> => ({
  BEARER_PROXY_TOKEN_URL: tokenUrl,
  BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
  BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret,
  ...extra
})

t.test('client_credentials against oidc-provider, with client_secret_post and client_secret_basic', async (t) => {
  for (const method of ['client_secret_post', 'client_secret_basic'] as const) {
    const idp = await startIdp({ clients: [{ ...CLIENT, authMethod: method }], accessTokenTtl: 60 })
    t.teardown(() => idp.close())
    const { tokens } = startTokenManager(t, oidcEnv(idp.tokenUrl, { BEARER_PROXY_CLIENT_AUTH: method }))
    const token = await tokens.get()
    t.equal(token.subject, CLIENT.clientId, method)
    // The earlier of expires_in and the JWT's exp, which has whole seconds: up to a second (and the request's time) shorter.
    const lifetime = token.expiresAt - token.obtainedAt
    t.ok(lifetime <= 60_000 && lifetime > 57_000, `${method}: a 60 s token (${lifetime} ms)`)
  }
})

t.test('password grant, then renewal with the refresh token from the response', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 2 })
  const { tokens, logs } = startTokenManager(t, oidcEnv(idp.tokenUrl, {
    BEARER_PROXY_GRANT: 'password', BEARER_PROXY_USERNAME: USER.username, BEARER_PROXY_PASSWORD: USER.password
  }))
  const first = await tokens.get()
  t.equal(first.subject, USER.username)
  t.equal(first.grant, 'password')
  tokens.start()
  await afterFetch(tokens, () => logs.events('token_renewed').length >= 1, 5000, 'a renewal')
  t.equal(logs.events('token_renewed')[0]?.grant, 'refresh_token', 'renewed with the refresh token, not the password')
  t.equal(tokens.current()?.subject, USER.username)
})

t.test('GRANT=refresh_token starts from a configured refresh token and keeps the rotated one', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 2 })
  const login = await request(idp.tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'password', ...USER, client_id: CLIENT.clientId, client_secret: CLIENT.clientSecret }).toString()
  })
  const { refresh_token: refreshToken } = await login.body.json() as { refresh_token: string }
  const { tokens, logs } = startTokenManager(t, oidcEnv(idp.tokenUrl, { BEARER_PROXY_GRANT: 'refresh_token', BEARER_PROXY_REFRESH_TOKEN: refreshToken }))
  t.equal((await tokens.get()).subject, USER.username)
  tokens.start()
  // oidc-provider rotates refresh tokens: a second renewal only works with the rotated one.
  await afterFetch(tokens, () => logs.events('token_renewed').length >= 2, 8000, 'two renewals')
  t.same(logs.events('token_failed'), [], 'no renewal failed')
})

t.test('the form carries grant, client, scope, audience and TOKEN_PARAMS; basic auth is form-encoded', async (t) => {
  const endpoint = await startTokenEndpoint(t, () => ({ body: { access_token: 'opaque-1', expires_in: 100, token_type: 'bearer' } }))
  const { tokens } = startTokenManager(t, oidcEnv(`${endpoint.url}/token`, {
    BEARER_PROXY_SCOPE: 'openid api:read',
    BEARER_PROXY_AUDIENCE: 'https://api.example',
    BEARER_PROXY_TOKEN_PARAMS: 'resource=urn:x&response_type=id_token',
    BEARER_PROXY_CLIENT_SECRET: 'se:cr&et'
  }))
  await tokens.get()
  t.same(endpoint.calls[0]?.fields, {
    grant_type: 'client_credentials', client_id: CLIENT.clientId, client_secret: 'se:cr&et',
    scope: 'openid api:read', audience: 'https://api.example', resource: 'urn:x', response_type: 'id_token'
  })
  t.equal(endpoint.calls[0]?.headers['content-type'], 'application/x-www-form-urlencoded')

  const basic = startTokenManager(t, oidcEnv(`${endpoint.url}/token`, { BEARER_PROXY_CLIENT_AUTH: 'client_secret_basic', BEARER_PROXY_CLIENT_SECRET: 'se:cr&et' }))
  await basic.tokens.get()
  const header = endpoint.calls[1]?.headers.authorization ?? ''
  t.equal(Buffer.from(header.replace('Basic ', ''), 'base64').toString(), `${CLIENT.clientId}:se%3Acr%26et`)
  t.notOk('client_secret' in (endpoint.calls[1]?.fields ?? {}))
})

t.test('expiry is the earlier of expires_in and the JWT exp, else 300 s', async (t) => {
  const withExp = await jwt(40)
  const answers = [
    { access_token: withExp, expires_in: 100 },
    { access_token: withExp, expires_in: 20 },
    { access_token: withExp },
    { access_token: 'not-a-jwt', expires_in: 100 },
    { access_token: 'not-a-jwt' }
  ]
  const endpoint = await startTokenEndpoint(t, () => ({ body: answers[endpoint.calls.length - 1] }))
  const expected = [40, 20, 40, 100, 300]
  for (const seconds of expected) {
    const { tokens } = startTokenManager(t, oidcEnv(`${endpoint.url}/token`))
    const token = await tokens.get()
    const lifetime = token.expiresAt - token.obtainedAt
    t.ok(lifetime <= seconds * 1000 && lifetime > seconds * 1000 - 3000, `lifetime ${seconds} s (${lifetime} ms)`)
  }
})

t.test('REFRESH_SKEW counts a token expired early, capped at 10% of its lifetime; 0 is accepted', async (t) => {
  const endpoint = await startTokenEndpoint(t, () => ({ body: { access_token: 'x', expires_in: 1000 } }))
  for (const [skew, expected] of [['30', 30_000], ['500', 100_000], ['0', 0]] as const) {
    const { tokens } = startTokenManager(t, oidcEnv(`${endpoint.url}/token`, { BEARER_PROXY_REFRESH_SKEW: skew }))
    const token = await tokens.get()
    t.equal(token.expiresAt - token.staleAt, expected, `skew ${skew}`)
    t.equal(token.renewAt - token.obtainedAt, 800_000, 'renewed at 80% of its lifetime')
  }
})

t.test('one token request in flight however many callers wait', async (t) => {
  const endpoint = await startTokenEndpoint(t, () => ({ body: { access_token: 'shared', expires_in: 60 }, delayMs: 200 }))
  const { tokens } = startTokenManager(t, oidcEnv(`${endpoint.url}/token`))
  const all = await Promise.all(Array.from({ length: 200 }, () => tokens.get()))
  t.equal(endpoint.calls.length, 1)
  t.ok(all.every((token) => token === all[0]))
})

t.test('a refresh token that is refused falls back to the configured grant', async (t) => {
  const endpoint = await startTokenEndpoint(t, (call) => {
    if (call.fields.grant_type === 'refresh_token') return { status: 400, body: { error: 'invalid_grant', error_description: 'refresh token expired' } }
    return { body: { access_token: `a${endpoint.calls.length}`, expires_in: 1, refresh_token: 'rt-1' } }
  })
  const { tokens, logs } = startTokenManager(t, oidcEnv(`${endpoint.url}/token`))
  tokens.start()
  await afterFetch(tokens, () => logs.events('token_renewed').length >= 1, 5000, 'a renewal')
  t.same(endpoint.calls.map((call) => call.fields.grant_type), ['client_credentials', 'refresh_token', 'client_credentials'])
  t.equal(endpoint.calls[1]?.fields.refresh_token, 'rt-1')
  t.match(logs.events('token_refresh_failed')[0], { error: /answered 400 invalid_grant \(refresh token expired\)/ })
})

t.test('while callers wait for a token, the next attempt comes about a second after the last, not when the back-off says; one at a time', async (t) => {
  const clock = new FakeClock()
  const arrivals: number[] = []
  const endpoint = await startTokenEndpoint(t, () => {
    arrivals.push(clock.now())
    return arrivals.length < 3 ? { status: 401, body: { error: 'invalid_client', error_description: 'bad secret' } } : { body: { access_token: 'back-again', expires_in: 60 } }
  })
  // A back-off of 120 s: a caller that waited for it would wait two minutes.
  const { tokens } = startTokenManager(t, oidcEnv(`${endpoint.url}/token`), { backoffMs: 120_000, maxBackoffMs: 120_000, clock })
  await t.rejects(tokens.get(), { code: 'token_unavailable', message: `token endpoint ${endpoint.url}/token answered 401 invalid_client (bad secret)` })
  const waiting = tokens.get().then(() => undefined, (error: unknown) => error as { code: string, retryAfter: number })
  clock.advance(899)
  t.equal(endpoint.calls.length, 1, 'nothing asked before 0.9 s')
  clock.advance(1)
  t.match(await waiting, { code: 'token_unavailable', retryAfter: 1 }, 'the caller waited for the next attempt, at 0.9 s, which failed: Retry-After 1')
  t.equal(endpoint.calls.length, 2)
  // Three callers at once share the next attempt, which succeeds.
  const three = Promise.all([tokens.get(), tokens.get(), tokens.get()])
  clock.advance(900)
  t.same((await three).map((token) => token.reveal()), ['back-again', 'back-again', 'back-again'])
  t.equal(endpoint.calls.length, 3, 'one request for the three')
  t.same(arrivals.map((at) => at - (arrivals[0] as number)), [0, 900, 1800], 'each 0.9 s after the one before, on the clock')
})

t.test('faults: down, slow, garbage, errors; back-off doubles; recovery', async (t) => {
  // One fault per request, in order, whenever the retries come: the sequence cannot be raced.
  const faults: Array<() => Scripted> = [
    () => ({ status: 401, body: { error: 'invalid_client', error_description: 'bad secret' } }),
    () => ({ body: '<html>oops</html>', contentType: 'text/html' }),
    () => ({ body: { token_type: 'bearer' } }),
    () => ({ body: { access_token: 'late' }, delayMs: 1000 })
  ]
  const endpoint = await startTokenEndpoint(t, () => (faults[endpoint.calls.length - 1] ?? (() => ({ body: { access_token: 'finally', expires_in: 60 } })))())
  const { tokens, logs } = startTokenManager(t, oidcEnv(`${endpoint.url}/token`, { BEARER_PROXY_TIMEOUT: '0.3' }), { backoffMs: 20 })

  await t.rejects(tokens.get(), { code: 'token_unavailable', message: `token endpoint ${endpoint.url}/token answered 401 invalid_client (bad secret)` })
  await afterFetch(tokens, () => tokens.current() !== undefined, 5000, 'recovery after four failures')
  const errors = logs.events('token_failed').map((entry) => entry.error as string)
  t.equal(errors.length, 4)
  t.match(errors[0], /answered 401 invalid_client \(bad secret\)/)
  t.match(errors[1], /answered with a body that is not JSON/)
  t.match(errors[2], /unusable response: response has no access_token/)
  t.match(errors[3], /no answer in time/)
  const delays = logs.events('token_failed').map((entry) => entry.retryInMs as number)
  t.ok(delays.every((delay, i) => delay >= 10 * 2 ** i && delay <= 20 * 2 ** i), `back-off doubles with jitter: ${delays.join(', ')}`)
  t.equal(endpoint.calls.length, 5, 'the fifth request got the token')
  t.equal(tokens.lastError(), undefined)
})

t.test('a failed renewal keeps the still-valid token in use', async (t) => {
  const clock = new FakeClock()
  const endpoint = await startTokenEndpoint(t, () => endpoint.calls.length === 1
    ? { body: { access_token: 'tok-1', expires_in: 60 } }
    : { status: 503, body: 'maintenance', contentType: 'text/plain' })
  const echo = await startEcho(t)
  const { url, proxy, logs } = await startTestProxy(t, {
    ...oidcEnv(`${endpoint.url}/token`),
    BEARER_PROXY_UPSTREAM: echo.url,
    BEARER_PROXY_PORT: '0'
  }, { backoffMs: 100, clock })
  await afterFetch(proxy.tokens, () => proxy.tokens.current() !== undefined, 5000, 'the first token')
  // At 80% of its 60 s the renewal comes, and fails: 12 s of life are left.
  clock.advance(48_000)
  await afterFetch(proxy.tokens, () => logs.events('token_failed').length >= 1, 5000, 'a failed renewal')
  t.match(logs.events('token_failed')[0], { error: /answered 503$/ })
  const response = await request(`${url}/still-works`)
  t.equal(response.statusCode, 200)
  t.equal(await response.body.text(), 'Bearer tok-1', 'the old token is still used')
  t.equal((await request(`${url}/-/ready`)).statusCode, 200)
  endpoint.answer = () => ({ body: { access_token: 'tok-2', expires_in: 60 } })
  // The back-off's retry (50-100 ms), on the clock.
  clock.advance(100)
  await afterFetch(proxy.tokens, () => logs.events('token_renewed').length >= 1, 5000, 'the renewal to succeed')
  t.equal(await (await request(`${url}/again`)).body.text(), 'Bearer tok-2')
  t.equal(endpoint.calls.length, 3, 'no other request: the renewal, its one retry')
})

t.test('a rotated secret file is read at the next token request, without a restart', async (t) => {
  const clock = new FakeClock()
  const idp = await startIdentity(t, { accessTokenTtl: 60 })
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-'))
  const file = join(dir, 'client-secret')
  writeFileSync(file, `${CLIENT.clientSecret}\n`)
  const { tokens, logs } = startTokenManager(t, {
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
    BEARER_PROXY_CLIENT_SECRET_FILE: file
  }, { backoffMs: 20, clock })
  tokens.start()
  await afterFetch(tokens, () => tokens.current() !== undefined, 5000, 'a token with the secret from the file (trailing newline trimmed)')
  writeFileSync(file, 'revoked-secret')
  clock.advance(48_000)
  await afterFetch(tokens, () => logs.events('token_failed').length >= 1, 5000, 'the renewal with the wrong secret to fail')
  t.match(logs.events('token_failed')[0], { error: /answered 401 invalid_client/ })
  writeFileSync(file, CLIENT.clientSecret)
  clock.advance(20)
  await afterFetch(tokens, () => logs.events('token_renewed').length >= 1, 5000, 'a renewal with the rotated secret')
  t.equal(idp.tokenRequests, 3, 'the first, the failed renewal, its retry')
})

t.test('discovery from an issuer with a path; UPSTREAM + REALM finds Keycloak 17+ at /realms and older Keycloak at /auth/realms', async (t) => {
  const realm = await startIdentity(t, { path: '/realms/team' })
  const discovered = startTokenManager(t, { BEARER_PROXY_ISSUER: realm.issuer, BEARER_PROXY_CLIENT_ID: CLIENT.clientId, BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret })
  t.equal((await discovered.tokens.get()).subject, CLIENT.clientId)
  t.match(discovered.logs.events('token_endpoint_discovered')[0], { endpoint: `${realm.issuer}/token` })

  const keycloak = await startIdentity(t, { path: '/auth/realms/runai', tokenPath: '/protocol/openid-connect/token' })
  const derived = startTokenManager(t, {
    BEARER_PROXY_UPSTREAM: new URL(keycloak.issuer).origin,
    BEARER_PROXY_REALM: 'runai',
    BEARER_PROXY_SCOPE: 'openid',
    BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
    BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret
  })
  const token = await derived.tokens.get()
  t.equal(decodeJwt(token.authorization.slice(7)).iss, keycloak.issuer)
  t.equal(keycloak.tokenRequests, 1, 'asked at <UPSTREAM>/auth/realms/runai/protocol/openid-connect/token')
  t.match(derived.logs.events('token_endpoint_discovered')[0], { issuer: keycloak.issuer, endpoint: `${keycloak.issuer}/protocol/openid-connect/token` },
    'after /realms/runai answered 404')

  const current = await startIdentity(t, { path: '/realms/team', tokenPath: '/protocol/openid-connect/token' })
  const today = startTokenManager(t, {
    BEARER_PROXY_UPSTREAM: new URL(current.issuer).origin,
    BEARER_PROXY_REALM: 'team',
    BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
    BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret
  })
  t.equal(decodeJwt((await today.tokens.get()).authorization.slice(7)).iss, current.issuer)
  t.match(today.logs.events('token_endpoint_discovered')[0], { issuer: current.issuer })

  const nowhere = startTokenManager(t, {
    BEARER_PROXY_UPSTREAM: new URL(current.issuer).origin,
    BEARER_PROXY_REALM: 'missing',
    BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
    BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret
  })
  await t.rejects(nowhere.tokens.get(), { code: 'token_unavailable', message: /^no usable discovery document: http:\/\/127\.0\.0\.1:\d+\/realms\/missing\/\.well-known\/openid-configuration answered 404; .*\/\.well-known\/oauth-authorization-server\/realms\/missing answered 404; .*\/auth\/realms\/missing\/\.well-known\/openid-configuration answered 404; .*\/\.well-known\/oauth-authorization-server\/auth\/realms\/missing answered 404$/ })
})

t.test('a lifetime of a year is honoured with a renewal timer of at most 24 h, from expires_in or a JWT exp', async (t) => {
  const year = 365 * 24 * 3600
  const answers = [{ access_token: 'long-lived', expires_in: year }, { access_token: await jwt(year) }]
  for (const answer of answers) {
    const endpoint = await startTokenEndpoint(t, () => ({ body: answer }))
    const echo = await startEcho(t)
    const { url, proxy } = await startTestProxy(t, {
      ...oidcEnv(`${endpoint.url}/token`),
      BEARER_PROXY_UPSTREAM: echo.url,
      BEARER_PROXY_PORT: '0'
    })
    const token = await proxy.tokens.get()
    const lifetime = token.expiresAt - token.obtainedAt
    t.ok(lifetime <= year * 1000 && lifetime > year * 1000 - 3000, 'a year')
    t.equal(token.renewAt - token.obtainedAt, 24 * 3600_000, 'renewed within a day')
    for (let i = 0; i < 5; i++) t.equal((await request(`${url}/x`)).statusCode, 200)
    const ready = await request(`${url}/-/ready`)
    t.equal(ready.statusCode, 200)
    t.equal((await ready.body.json() as { tokenExpiresAt: string }).tokenExpiresAt, new Date(token.expiresAt).toISOString())
    t.equal(endpoint.calls.length, 1, 'no renewal storm')
  }
})

t.test('any positive lifetime is honoured, however long: held, renewed within a day, a sane expiry in /-/ready; an earlier JWT exp still wins', async (t) => {
  const year = 365 * 24 * 3600
  const thousandYears = 1000 * year * 1000
  for (const [body, lifetimeMs] of [
    [{ access_token: 'x-ten-years', expires_in: 10 * year + 1 }, (10 * year + 1) * 1000],
    [{ access_token: 'x-1e9', expires_in: 1e9 }, 1e12],
    [{ access_token: 'x-1e12', expires_in: 1e12 }, thousandYears],
    [{ access_token: 'x-1e13', expires_in: 1e13 }, thousandYears],
    [{ access_token: 'x-1e300', expires_in: 1e300 }, thousandYears],
    ['{"access_token":"x-infinite","expires_in":1e400}', thousandYears],
    [{ access_token: await jwt(20 * year) }, 20 * year * 1000],
    [{ access_token: await jwt(3600), expires_in: 1e13 }, 3600 * 1000]
  ] as Array<[unknown, number]>) {
    const endpoint = await startTokenEndpoint(t, () => ({ body }))
    const echo = await startEcho(t)
    const { url, proxy } = await startTestProxy(t, { ...oidcEnv(`${endpoint.url}/token`), BEARER_PROXY_UPSTREAM: echo.url, BEARER_PROXY_PORT: '0' })
    const token = await proxy.tokens.get()
    t.ok(Math.abs(token.expiresAt - token.obtainedAt - lifetimeMs) < 3000, `${JSON.stringify(body).slice(0, 60)}: held for its lifetime (at most 1000 years)`)
    t.ok(token.renewAt - token.obtainedAt <= 24 * 3600_000, 'renewed within a day')
    t.equal((await request(`${url}/x`)).statusCode, 200)
    const ready = await request(`${url}/-/ready`)
    t.equal(ready.statusCode, 200)
    const { tokenExpiresAt } = await ready.body.json() as { tokenExpiresAt: string }
    t.equal(tokenExpiresAt, new Date(token.expiresAt).toISOString(), 'a date /-/ready can show')
    t.ok(new Date(tokenExpiresAt).getUTCFullYear() < 3100)
    t.equal(endpoint.calls.length, 1, 'one token request')
  }
})

t.test('a lifetime too short to use: the token endpoint is asked at most once a second, and it is said once, in the log and /-/ready (on the clock)', async (t) => {
  for (const expiresIn of [0.001, 1e-320]) {
    const clock = new FakeClock()
    const endpoint = await startTokenEndpoint(t, () => ({ body: { access_token: `short-${endpoint.calls.length}`, expires_in: expiresIn } }))
    const echo = await startEcho(t)
    const { url, proxy, logs } = await startTestProxy(t, { ...oidcEnv(`${endpoint.url}/token`), BEARER_PROXY_UPSTREAM: echo.url, BEARER_PROXY_PORT: '0' }, { clock })
    const { tokens } = proxy
    t.equal((await tokens.get()).reveal(), 'short-1', 'the first token, at once')
    clock.advance(100)
    t.equal(tokens.current(), undefined, 'used up within 0.1 s')
    const ready = await request(`${url}/-/ready`)
    t.equal(ready.statusCode, 503)
    t.match(await ready.body.json(), { ready: false, reason: /last less than a second/ }, '/-/ready says why, not "not obtained yet"')
    // Demand throughout: a caller waiting now gets the next token a second after the last was asked for, not at once.
    const next = tokens.get()
    clock.advance(899)
    await new Promise((resolve) => setImmediate(resolve))
    t.equal(endpoint.calls.length, 1, 'nothing asked before a second has passed')
    clock.advance(1)
    t.equal((await next).reveal(), 'short-2')
    for (let second = 3; second <= 5; second++) {
      clock.advance(100)
      const waiting = tokens.get()
      clock.advance(900)
      t.equal((await waiting).reveal(), `short-${second}`)
    }
    t.equal(endpoint.calls.length, 5, 'five token requests in four seconds of demand')
    // A request through the proxy waits for the next token, however short its life: time moves on until it is answered.
    let answered = false
    const pending = request(`${url}/x`).finally(() => { answered = true })
    for (let step = 0; step < 50 && !answered; step++) {
      clock.advance(100)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    const answer = await pending
    t.equal(answer.statusCode, 200, 'requests are answered with a token of the moment')
    await answer.body.dump()
    t.equal(logs.events('token_short_lived').length, 1, 'said once')
    t.match(logs.events('token_short_lived')[0], { level: 40, msg: /grants tokens that last less than a second, too short to use: it is asked again at most once a second/ })
  }
})

t.test('lifetimes that are not positive numbers, and tokens that cannot be sent as a bearer, are failed token requests', async (t) => {
  const unusable: Array<[unknown, RegExp]> = [
    [{ access_token: 'x', expires_in: -5 }, /invalid expires_in/],
    [{ access_token: 'x', expires_in: 0 }, /invalid expires_in/],
    [{ access_token: 'x', expires_in: 'soon' }, /invalid expires_in/],
    [{ access_token: await jwt(-60) }, /already expired/],
    [{ access_token: 'a'.repeat(900 * 1024), expires_in: 60 }, /the access token it granted is 900 KiB, more than the 64 KiB a request header can carry/],
    ...['two words', 'line\r\nx-injected: 1', 'nul\u0000byte', 'tökén', 'tab\there', 'pad=ding', '=leading', 'quote"d', 'semi;colon', 'comma,'].map(
      (value): [unknown, RegExp] => [{ access_token: value, expires_in: 60 }, /characters a bearer token cannot carry \(RFC 6750\)/])
  ]
  for (const [body, message] of unusable) {
    const endpoint = await startTokenEndpoint(t, () => ({ body }))
    const upstream = await startEcho(t)
    const { url, proxy } = await startTestProxy(t, {
      ...oidcEnv(`${endpoint.url}/token`),
      BEARER_PROXY_UPSTREAM: upstream.url,
      BEARER_PROXY_PORT: '0'
    })
    await t.rejects(proxy.tokens.get(), { code: 'token_unavailable', message })
    const response = await request(`${url}/x`)
    t.equal(response.statusCode, 503)
    t.match(await response.body.json(), { error: 'token_unavailable', message })
    const ready = await request(`${url}/-/ready`)
    t.equal(ready.statusCode, 503)
    t.match(await ready.body.json(), { ready: false, reason: message })
    t.equal(upstream.requests(), 0, 'nothing reached the upstream')
  }
  t.ok(checkBearer(new Secret('abc-._~+/xyz==')), 'every b64token character is accepted')
})
