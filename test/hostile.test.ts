import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { request } from 'undici'
import type { Upstream } from './helpers/upstream.js'
import { baseEnv, CLIENT, rawHttp, startApiOf, startIdentity, startTestProxy, type Teardown, USER } from './helpers/stack.js'
import { assertNoSecret, pieces, spellings } from './helpers/secrets.js'
import { makePki } from './helpers/tls.js'
import { startTokenEndpoint, type TokenCall } from './helpers/token-endpoint.js'

interface Stack { url: string, admin: Upstream, a: Upstream, reached: () => number }

/** The proxy in front of an admin API and cluster `a` (with a base path), `/api/v1/admin` denied. */
async function stack (t: Teardown, extra: Record<string, string> = {}): Promise<Stack & Awaited<ReturnType<typeof startTestProxy>>> {
  const idp = await startIdentity(t)
  const [admin, a] = [await startApiOf(t, idp), await startApiOf(t, idp)]
  const proxy = await startTestProxy(t, { ...baseEnv(idp, admin), BEARER_PROXY_CLUSTERS: `a=${a.url}/base`, BEARER_PROXY_DENY_PATHS: '/api/v1/admin', ...extra })
  return { ...proxy, admin, a, reached: () => admin.seen.length + a.seen.length }
}

const get = (target: string, headers = 'Host: localhost\r\n'): string => `GET ${target} HTTP/1.1\r\n${headers}Connection: close\r\n\r\n`
const upgrade = (target: string, headers = 'Host: localhost\r\n'): string => `GET ${target} HTTP/1.1\r\n${headers}Connection: Upgrade\r\nUpgrade: websocket\r\n` +
  'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'
const status = (answer: string): number => Number(answer.slice(9, 12))
const body = (answer: string): Record<string, unknown> => JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>

/** The proxy's own refusal: the errors table's JSON, not cached, the connection closed. */
function assertRefusal (t: Test, answer: string, expected: number, code: string, what: string): void {
  t.equal(status(answer), expected, `${what}: ${expected}`)
  const head = answer.slice(0, answer.indexOf('\r\n\r\n')).toLowerCase()
  t.match(head, /content-type: application\/json/, `${what}: JSON`)
  t.match(head, /cache-control: no-store/, `${what}: not cached`)
  t.match(head, /connection: close/, `${what}: connection closed`)
  t.match(body(answer), { error: code, message: String, requestId: /^[0-9a-f-]{36}$/ }, `${what}: the errors table's shape`)
}

t.test('one path, judged and forwarded: fragments, path parameters, empty segments and encoded delimiters are refused, on HTTP and WebSocket alike', async (t) => {
  const s = await stack(t)
  const refused = [
    '/api/v1/admin#x', '/api/v1/admin#x?y=1', '/api/v1/admin?x=1#y', '/api/v1/ok#frag', '/clusters/a/x#', '/api/v1/admin%23x',
    '/api/v1/admin;x/users', '/api/v1/admin;/users', '/api/v1;x/admin', '/api/v1/admin;', '/clusters/a;x/y', '/api/v1/admin%3bx/users', '/api/v1/admin%3B',
    '/api/v1//admin', '/api//v1/admin', '/api/v1/admin//', '/clusters//a/x', '/clusters/a//x', '/api/v1/admin%3fx', '/api/v1/admin%3F',
    '/api/v1/admin%253bx/users', '/api/v1/admin%2523x', '/api/v1/%2561dmin', '/api/v1/admin%252F..'
  ]
  for (const target of refused) {
    assertRefusal(t, await rawHttp(s.url, get(target)), 400, 'bad_request', target)
    assertRefusal(t, await rawHttp(s.url, upgrade(target)), 400, 'bad_request', `upgrade ${target}`)
  }
  t.equal(s.reached(), 0, 'no upstream saw any of them')

  // Prefix rules are matched without regard to case: a case-insensitive upstream must not be reached by another spelling.
  for (const target of ['/API/v1/admin', '/api/V1/Admin/users', '/Api/v1/ADMIN?x=1']) {
    assertRefusal(t, await rawHttp(s.url, get(target)), 403, 'forbidden', target)
    assertRefusal(t, await rawHttp(s.url, upgrade(target)), 403, 'forbidden', `upgrade ${target}`)
  }
  t.equal(s.reached(), 0)

  // What stays allowed reaches the upstream exactly as sent: `;`, `#` and `?` encoded in the query are the query's business.
  for (const [target, upstream, where] of [
    ['/api/v1/adminx', '/api/v1/adminx', s.admin],
    ['/api/v1/ok?q=a;b&c=%23&d=%3f', '/api/v1/ok?q=a;b&c=%23&d=%3f', s.admin],
    ['/clusters/a/x/', '/base/x/', s.a]
  ] as const) {
    t.equal(status(await rawHttp(s.url, get(target))), 200, target)
    t.equal(where.seen.at(-1)?.url, upstream, `${target} forwarded as judged`)
  }
})

t.test('READ_ONLY: method overrides in any spelling and WebSocket upgrades are refused', async (t) => {
  const s = await stack(t, { BEARER_PROXY_READ_ONLY: 'true' })
  const overrides = [
    'X-HTTP-Method-Override: DELETE', 'X-HTTP-Method: PUT', 'X-Method-Override: POST', 'x-http-method-override: get',
    'X_HTTP_Method_Override: DELETE', 'X-HTTP_Method-Override: PATCH', 'X_Method_Override: DELETE'
  ]
  for (const header of overrides) {
    assertRefusal(t, await rawHttp(s.url, get('/api/v1/jobs', `Host: localhost\r\n${header}\r\n`)), 403, 'forbidden', header)
  }
  for (const target of ['/api/v1/jobs?_method=DELETE', '/api/v1/jobs?a=1&_METHOD=put', '/api/v1/jobs?%5Fmethod=DELETE', '/api/v1/jobs?%5fMethod=post']) {
    assertRefusal(t, await rawHttp(s.url, get(target)), 403, 'forbidden', target)
  }
  for (const target of ['/api/v1/watch', '/clusters/a/exec']) {
    assertRefusal(t, await rawHttp(s.url, upgrade(target)), 403, 'forbidden', `upgrade ${target}`)
  }
  t.equal(s.reached(), 0, 'none reached an upstream')
  t.equal(status(await rawHttp(s.url, get('/api/v1/jobs?method=x&my_method=y'))), 200, 'other parameters are fine')
  t.equal(s.admin.seen.at(-1)?.url, '/api/v1/jobs?method=x&my_method=y')
})

t.test('headers for the client\'s proxy only: Connection-listed ones and look-alikes of credentials never reach the upstream', async (t) => {
  const s = await stack(t)
  const hostile = 'Connection: close, X-Hop-Secret\r\nX-Hop-Secret: hop-Value-1\r\nProxy_Authorization: Bearer LookAlike-2\r\n' +
    'Authorization_: Bearer LookAlike-3\r\nproxy-authorization_: LookAlike-4\r\nAUTHORIZATION_: LookAlike-5\r\nX-Kept_Header: kept\r\n'
  t.equal(status(await rawHttp(s.url, `GET /api/v1/h HTTP/1.1\r\nHost: localhost\r\n${hostile}\r\n`)), 200)
  const seen = s.admin.seen.at(-1)?.headers ?? {}
  t.same(Object.keys(seen).filter((name) => /hop|authorization/i.test(name)), ['authorization'], 'only the proxy\'s own Authorization')
  t.equal(seen['x-kept_header'], 'kept', 'other names with _ pass')

  // The WebSocket path applies the same policy.
  const { WebSocketServer } = await import('ws')
  const wss = new WebSocketServer({ server: s.a.server })
  const upgraded: Array<Record<string, unknown>> = []
  wss.on('connection', (socket, req) => { upgraded.push(req.headers); socket.terminate() })
  t.teardown(() => { wss.close() })
  const answer = await rawHttp(s.url, `GET /clusters/a/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, X-Hop-Secret\r\nUpgrade: websocket\r\n` +
    'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Hop-Secret: hop-Value-1\r\nProxy_Authorization: Bearer LookAlike-2\r\n' +
    'Authorization_: Bearer LookAlike-3\r\nAuthorization: Bearer ClientToken-6\r\n\r\n')
  t.equal(status(answer), 101)
  t.equal(upgraded.length, 1)
  const names = Object.keys(upgraded[0] ?? {})
  t.same(names.filter((name) => /hop|authorization/i.test(name)), ['authorization'])
  t.match(String(upgraded[0]?.authorization), /^Bearer ey/, 'the proxy\'s token, not the client\'s')
})

t.test('Host: two of them, a malformed one, or none on HTTP/1.1 is 400 (RFC 9112 §3.2), judged before anything else', async (t) => {
  const s = await stack(t)
  const cases = [
    'Host: localhost\r\nHost: evil.example\r\n', 'Host: evil.example\r\nHost: localhost\r\n', 'Host: localhost\r\nhost: localhost\r\n',
    'Host: local host\r\n', 'Host: evil.example/x\r\n', 'Host: localhost:80:90\r\n', 'Host: [::1\r\n', 'Host: localhost@evil.example\r\n',
    'Host: \r\n', 'Host: localhost:8080x\r\n', ''
  ]
  for (const headers of cases) {
    assertRefusal(t, await rawHttp(s.url, get('/api/v1/x', headers)), 400, 'bad_request', JSON.stringify(headers))
    assertRefusal(t, await rawHttp(s.url, upgrade('/api/v1/x', headers)), 400, 'bad_request', `upgrade ${JSON.stringify(headers)}`)
    assertRefusal(t, await rawHttp(s.url, get('/-/ready', headers)), 400, 'bad_request', `probe ${JSON.stringify(headers)}`)
  }
  t.equal(s.reached(), 0)
  t.equal(status(await rawHttp(s.url, 'GET /api/v1/x HTTP/1.0\r\n\r\n')), 200, 'HTTP/1.0 needs no Host')
  t.equal(status(await rawHttp(s.url, get('/api/v1/x', 'Host: LOCALHOST:8080\r\n'))), 200)
})

t.test('one error shape: the HTTP parser\'s refusals, CONNECT and WebSocket refusals are the errors table\'s JSON, the connection closed', async (t) => {
  const s = await stack(t)
  const cases: Array<[string, string, number, string]> = [
    ['Content-Length and Transfer-Encoding', 'POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, 'bad_request'],
    ['two Content-Lengths', 'POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd', 400, 'bad_request'],
    ['a Transfer-Encoding other than chunked', 'POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n', 400, 'bad_request'],
    ['a NUL in a header', 'GET /x HTTP/1.1\r\nHost: localhost\r\nX: a\u0000b\r\n\r\n', 400, 'bad_request'],
    ['a space in a header name', 'GET /x HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n', 400, 'bad_request'],
    ['an obsolete folded header', 'GET /x HTTP/1.1\r\nHost: localhost\r\nX: a\r\n folded\r\n\r\n', 400, 'bad_request'],
    ['bare LF line ends', 'GET /x HTTP/1.1\nHost: localhost\n\n', 400, 'bad_request'],
    ['a malformed chunk', 'POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n', 400, 'bad_request'],
    ['headers over the limit', `GET /x HTTP/1.1\r\nHost: localhost\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431, 'headers_too_large'],
    ['CONNECT', 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', 405, 'method_not_allowed'],
    ['an absolute-form target', 'GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n', 400, 'bad_request'],
    ['an unknown cluster upgrade', upgrade('/clusters/none/x'), 404, 'unknown_cluster'],
    ['an encoded traversal upgrade', upgrade('/clusters/a/%2e%2e/x'), 400, 'bad_request']
  ]
  for (const [what, text, expected, code] of cases) assertRefusal(t, await rawHttp(s.url, text), expected, code, what)
  t.equal(s.reached(), 0, 'nothing reached an upstream')
  t.equal(s.logs.text.includes('a'.repeat(100)), false, 'the refused bytes are not logged')
})

/** The echoes of a token request a hostile token endpoint can send back, each as an error body. */
function echoes (call: TokenCall): Array<{ status: number, body: unknown, contentType?: string }> {
  const basic = String(call.headers.authorization ?? '')
  const json = JSON.stringify(call.fields)
  return [
    { status: 400, body: { error: 'invalid_request', error_description: `could not parse ${call.raw}` } },
    { status: 401, body: { error: 'invalid_client', error_description: `bad header ${basic}` } },
    { status: 400, body: { error: 'invalid_request', error_description: `body was ${json}` } },
    { status: 400, body: { error: 'invalid_request', error_description: `b64 ${Buffer.from(call.raw).toString('base64')} and ${Buffer.from(json).toString('base64url')}` } },
    // The secret straddling the 200-character cut of older summaries, and as the error code itself.
    { status: 400, body: { error: String(call.fields.client_secret ?? call.fields.password ?? 'x'), error_description: `${'x '.repeat(95)}${json}` } },
    { status: 400, body: { code: 400, message: [`echo ${json}`, `raw ${call.raw}`] } },
    { status: 500, body: `<html>${call.raw} ${basic}</html>`, contentType: 'text/html' },
    { status: 400, body: { error: 'invalid_grant', error_description: 'Invalid user credentials' } }
  ]
}

t.test('no secret in any form: a token endpoint echoing the request never gets a secret into a body, /-/ready, a log line or a metric', async (t) => {
  // Characters that every encoding spells differently.
  const secret = 'Sx9+/=&%"q~Zk!secret-Value'
  const password = 'P@ss w0rd+/=%&"zz-Secret'
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const outputs: string[] = []
  const setups: Array<Record<string, string>> = [
    { BEARER_PROXY_CLIENT_SECRET: secret },
    { BEARER_PROXY_CLIENT_SECRET: secret, BEARER_PROXY_CLIENT_AUTH: 'client_secret_basic' },
    { BEARER_PROXY_CLIENT_SECRET: secret, BEARER_PROXY_GRANT: 'password', BEARER_PROXY_USERNAME: USER.username, BEARER_PROXY_PASSWORD: password },
    { BEARER_PROXY_AUTH: 'apiconnect', BEARER_PROXY_CLIENT_SECRET: secret, BEARER_PROXY_USERNAME: USER.username, BEARER_PROXY_PASSWORD: password, BEARER_PROXY_REALM: 'provider/default-idp-2' }
  ]
  for (const setup of setups) {
    for (let i = 0; i < 8; i++) {
      const endpoint = await startTokenEndpoint(t, (call) => echoes(call)[i] as { status: number, body: unknown })
      const env: Record<string, string> = { ...baseEnv(idp, api), BEARER_PROXY_TOKEN_URL: `${endpoint.url}/token`, BEARER_PROXY_LOG_LEVEL: 'trace', ...setup }
      if (setup.BEARER_PROXY_AUTH === 'apiconnect') {
        // API Connect's endpoint is derived from UPSTREAM: the echoing endpoint plays the platform.
        delete env.BEARER_PROXY_TOKEN_URL
        env.BEARER_PROXY_UPSTREAM = endpoint.url
      }
      const { url, logs } = await startTestProxy(t, env, { backoffMs: 5 })
      const answer = await request(`${url}/x`)
      t.equal(answer.statusCode, 503, `setup ${setups.indexOf(setup)}, echo ${i}`)
      const text = await answer.body.text()
      t.match(JSON.parse(text), { error: 'token_unavailable', message: /answered (400|401|500)/ })
      outputs.push(text, await (await request(`${url}/-/ready`)).body.text(), await (await request(`${url}/-/metrics`)).body.text(), logs.text)
      t.ok(endpoint.calls.length >= 1, 'the endpoint was asked')
    }
  }
  const all = outputs.join('\n')
  t.match(all, /Invalid user credentials/, 'a plain description is kept')
  for (const value of [secret, password]) {
    for (const spelling of spellings(value, CLIENT.clientId)) {
      // Any 8 characters in a row of any spelling: no fragment left after a cut either.
      assertNoSecret(t, `${JSON.stringify(spelling.slice(0, 5))}…`, all, pieces(spelling))
    }
  }
})

t.test('no downgrade: an https issuer naming a plain http token endpoint is refused unless allowed', async (t) => {
  const pki = makePki()
  const plain = await startTokenEndpoint(t, () => ({ body: { access_token: 'from-plain-http', expires_in: 60 } }))
  const tls = createHttpsServer({ key: pki.key, cert: pki.cert }, (req, res) => {
    req.resume()
    const issuer = `https://127.0.0.1:${(tls.address() as AddressInfo).port}`
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer, token_endpoint: `${plain.url}/token` }))
  })
  await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { tls.closeAllConnections(); tls.close() })
  const echo = await startTokenEndpoint(t, () => ({ body: {} }))
  const env = {
    BEARER_PROXY_ISSUER: `https://127.0.0.1:${(tls.address() as AddressInfo).port}`,
    BEARER_PROXY_CA_FILE: pki.caFile,
    BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
    BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret,
    BEARER_PROXY_UPSTREAM: echo.url,
    BEARER_PROXY_PORT: '0'
  }
  const refused = await startTestProxy(t, env, { backoffMs: 5 })
  const answer = await request(`${refused.url}/x`)
  t.equal(answer.statusCode, 503)
  t.match(await answer.body.json(), { error: 'token_unavailable', message: /plain http token endpoint \(http:\/\/127\.0\.0\.1:\d+\/token\) for an https issuer.*ALLOW_HTTP_TOKEN_ENDPOINT/ })
  t.equal(plain.calls.length, 0, 'no credentials were sent over plain http')

  const allowed = await startTestProxy(t, { ...env, BEARER_PROXY_ALLOW_HTTP_TOKEN_ENDPOINT: 'true' })
  t.equal((await allowed.proxy.tokens.get()).authorization, 'Bearer from-plain-http', 'allowed on purpose, it works')
  t.equal(plain.calls.length, 1)
})

t.test('a request refused for its framing is answered once, and nothing sent after it on that connection is answered, forwarded or tunnelled', async (t) => {
  const s = await stack(t)
  const behind = [get('/api/v1/behind'), upgrade('/api/v1/ws-behind'), 'GET /api/v1/third HTTP/1.1\r\nHost: localhost\r\n\r\n']
  const framings: Array<[string, string]> = [
    ['Transfer-Encoding: xchunked', ''],
    ['Transfer-Encoding: gzip, chunked', '0\r\n\r\n'],
    ['Transfer-Encoding: chunked, gzip', '0\r\n\r\n'],
    ['Transfer-Encoding: identity', ''],
    ['Transfer-Encoding: chunked\r\nTransfer-Encoding: x', '0\r\n\r\n'],
    ['Content-Length: 5\r\nContent-Length: 6', 'hello'],
    ['Content-Length: 5, 6', 'hello'],
    ['Content-Length: 5\r\nTransfer-Encoding: chunked', '0\r\n\r\n'],
    ['Content-Length: -1', ''],
    ['Transfer-Encoding: chunked', 'zz\r\nhello\r\n0\r\n\r\n'],
    ['Transfer-Encoding: chunked', '5\r\nhelloXX0\r\n\r\n'],
    ['Transfer-Encoding: chunked', '5;ext\u0000\r\nhello\r\n0\r\n\r\n']
  ]
  for (const [headers, payload] of framings) {
    for (const next of behind) {
      const answer = await rawHttp(s.url, `POST /api/v1/x HTTP/1.1\r\nHost: localhost\r\n${headers}\r\n\r\n${payload}${next}`)
      const what = `${headers.replace(/\r\n/g, ' / ')} then ${next.split('\r\n')[0] ?? ''}`
      t.equal(answer.match(/HTTP\/1\.1 \d{3}/g)?.length, 1, `${what}: one answer`)
      t.equal(status(answer), 400, what)
    }
  }
  // An upgrade refused for its framing: its connection carries nothing further either.
  for (const next of behind) {
    const answer = await rawHttp(s.url, `${upgrade('/api/v1/ws').replace('\r\n\r\n', '\r\nTransfer-Encoding: xchunked\r\n\r\n')}${next}`)
    t.equal(answer.match(/HTTP\/1\.1 \d{3}/g)?.length, 1, `an upgrade with Transfer-Encoding: xchunked then ${next.split('\r\n')[0] ?? ''}: one answer`)
  }
  t.equal(s.reached(), 0, 'nothing reached an upstream')
})

t.test('a pipelined request behind a request refused for any other reason is answered or never forwarded, never forwarded unanswered', async (t) => {
  const s = await stack(t)
  const behind = get('/api/v1/behind')
  for (const [first, expected] of [
    [get('/api/v1/%2e%2e/admin').replace('Connection: close\r\n', ''), 400],
    ['GET //api/v1/x HTTP/1.1\r\nHost: localhost\r\n\r\n', 400],
    ['GET http://other.example/ HTTP/1.1\r\nHost: localhost\r\n\r\n', 400],
    ['GET /api/v1/x HTTP/1.1\r\nHost: evil.example\r\n\r\n', 403],
    ['GET /api/v1/x HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\n\r\n', 403],
    ['GET /api/v1/admin HTTP/1.1\r\nHost: localhost\r\n\r\n', 403],
    ['GET /-/nothing HTTP/1.1\r\nHost: localhost\r\n\r\n', 404]
  ] as Array<[string, number]>) {
    const before = s.admin.seen.length
    const answer = await rawHttp(s.url, `${first}${behind}`)
    const answers = answer.match(/HTTP\/1\.1 \d{3}/g) ?? []
    const forwarded = s.admin.seen.length - before
    t.equal(status(answer), expected, first.split('\r\n')[0] ?? '')
    t.equal(answers.length, 1 + forwarded, `${first.split('\r\n')[0]}: the request behind it was ${forwarded === 1 ? 'forwarded and answered' : 'neither forwarded nor answered'}`)
    if (expected === 400) t.equal(forwarded, 0, 'behind a 400 nothing is forwarded')
  }
})
