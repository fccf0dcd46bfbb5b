import { execFileSync } from 'node:child_process'
import { mkdtempSync, statSync, writeFileSync } from 'node:fs'
import { createServer as createHttpServer, get as httpGet } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import type { Upstream } from './helpers/upstream.js'
import { baseEnv, rawHttp, startApiOf, startIdentity, startTestProxy, type Teardown, afterFetch } from './helpers/stack.js'
import { makePki, startTlsService } from './helpers/tls.js'
import { startTokenEndpoint } from './helpers/token-endpoint.js'

interface Stack { url: string, admin: Upstream, a: Upstream, b: Upstream, reached: () => number }

/** The proxy in front of an admin API and clusters a (with a base path) and b. */
async function stack (t: Teardown, extra: Record<string, string> = {}): Promise<Stack & Awaited<ReturnType<typeof startTestProxy>>> {
  const idp = await startIdentity(t)
  const [admin, a, b] = [await startApiOf(t, idp), await startApiOf(t, idp), await startApiOf(t, idp)]
  const proxy = await startTestProxy(t, { ...baseEnv(idp, admin), BEARER_PROXY_CLUSTERS: `a=${a.url}/base,b=${b.url}`, ...extra })
  return { ...proxy, admin, a, b, reached: () => admin.seen.length + a.seen.length + b.seen.length }
}

const get = (path: string, headers = ''): string => `GET ${path} HTTP/1.1\r\nHost: localhost\r\n${headers}Connection: close\r\n\r\n`
const status = (answer: string): number => Number(answer.slice(9, 12))

t.test('paths that escape their prefix are refused before anything is sent upstream', async (t) => {
  const s = await stack(t)
  const hostile = [
    '/clusters/a/../b/x', '/clusters/a/..%2f..%2fb/x', '/clusters/a/%2e%2e/%2e%2e/clusters/b/x', '/clusters/a/%2E%2e/x',
    '/clusters/a/.%2e/x', '/clusters/a/%252e%252e/b', '/clusters/a/%252fx', '/clusters/a/..\\b/x', '/clusters/a/%5c..%5cb',
    '/clusters/%61/x', '/%63lusters/a/x', '/%2d/ready', '/clusters/a/x%00y', '/api/%zz', '/x/..;/clusters/b', '/-/../x', '/clusters/a/./x'
  ]
  for (const path of hostile) {
    const answer = await rawHttp(s.url, get(path))
    t.equal(status(answer), 400, path)
    t.match(answer, /"error":"bad_request"/)
  }
  t.equal(s.reached(), 0, 'no upstream saw any of them')
  t.equal(s.admin.connections + s.a.connections + s.b.connections, 0, 'not even a connection')

  const fine = await rawHttp(s.url, get('/clusters/a/v1/%41bc/.hidden?q=%2e%2e'))
  t.equal(status(fine), 200)
  t.equal(s.a.seen[0]?.url, '/base/v1/%41bc/.hidden?q=%2e%2e', 'a clean path stays inside its own cluster\'s base path')
})

t.test('Host must be loopback or allowed (DNS rebinding); probes answer any Host', async (t) => {
  const s = await stack(t)
  for (const host of ['evil.example', 'evil.example:8080', '127.0.0.2', '[::2]:80']) {
    t.equal(status(await rawHttp(s.url, `GET /x HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`)), 403, host)
  }
  t.equal(s.reached(), 0)
  for (const host of ['localhost', 'LOCALHOST:1234', '127.0.0.1:8080', '[::1]:8080']) {
    t.equal(status(await rawHttp(s.url, `GET /x HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`)), 200, host)
  }
  t.equal(status(await rawHttp(s.url, 'GET /-/ready HTTP/1.1\r\nHost: 10.1.2.3:8080\r\nConnection: close\r\n\r\n')), 200, 'a kubelet probe by pod IP')

  const allowed = await stack(t, { BEARER_PROXY_ALLOWED_HOSTS: 'proxy.internal' })
  t.equal(status(await rawHttp(allowed.url, 'GET /x HTTP/1.1\r\nHost: proxy.internal:8080\r\nConnection: close\r\n\r\n')), 200)
  t.equal(status(await rawHttp(allowed.url, 'GET /x HTTP/1.1\r\nHost: other.internal\r\nConnection: close\r\n\r\n')), 403)
  const any = await stack(t, { BEARER_PROXY_ALLOWED_HOSTS: '*' })
  t.equal(status(await rawHttp(any.url, 'GET /x HTTP/1.1\r\nHost: anything.example\r\nConnection: close\r\n\r\n')), 200)
})

t.test('browser pages of other origins are refused; allowed origins get CORS', async (t) => {
  const s = await stack(t, { BEARER_PROXY_ALLOWED_ORIGINS: 'https://dash.example' })
  for (const header of ['Origin: https://evil.example', 'Origin: null', 'Sec-Fetch-Site: cross-site', 'Sec-Fetch-Site: same-site']) {
    t.equal(status(await rawHttp(s.url, get('/x', `${header}\r\n`))), 403, header)
  }
  t.equal(s.reached(), 0)
  for (const header of ['Sec-Fetch-Site: none', 'Sec-Fetch-Site: same-origin']) {
    t.equal(status(await rawHttp(s.url, get('/x', `${header}\r\n`))), 200, header)
  }
  const cors = await rawHttp(s.url, get('/x', 'Origin: https://dash.example\r\nSec-Fetch-Site: cross-site\r\n'))
  t.equal(status(cors), 200)
  t.match(cors, /access-control-allow-origin: https:\/\/dash\.example/i)
  const preflight = await rawHttp(s.url, 'OPTIONS /x HTTP/1.1\r\nHost: localhost\r\nOrigin: https://dash.example\r\n' +
    'Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n')
  t.equal(status(preflight), 204, 'preflight answered by the proxy')
  t.match(preflight, /access-control-allow-headers: content-type/i)
  t.equal(s.reached(), 3, 'the two same-origin requests and the allowed origin')
})

t.test('READ_ONLY forwards only GET, HEAD and OPTIONS', async (t) => {
  const s = await stack(t, { BEARER_PROXY_READ_ONLY: 'true' })
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE']) {
    const response = await request(`${s.url}/x`, { method: method as 'POST', body: method === 'DELETE' ? undefined : 'data' })
    t.equal(response.statusCode, 403, method)
    t.match(await response.body.json(), { error: 'forbidden', message: /READ_ONLY/ })
  }
  t.equal(s.reached(), 0)
  for (const method of ['GET', 'HEAD', 'OPTIONS']) {
    const response = await request(`${s.url}/x`, { method: method as 'GET' })
    t.equal(response.statusCode, 200, method)
    await response.body.dump()
  }
})

t.test('ALLOW_PATHS and DENY_PATHS match whole segments of the decoded path; deny wins', async (t) => {
  const s = await stack(t, { BEARER_PROXY_ALLOW_PATHS: '/api/v1,/clusters/a/', BEARER_PROXY_DENY_PATHS: '/api/v1/secrets' })
  const cases: Array<[string, number]> = [
    ['/api/v1', 200], ['/api/v1/jobs', 200], ['/api/v10', 403], ['/api', 403], ['/api/v1/secrets', 403], ['/api/v1/secrets/x', 403],
    ['/api/v1/%73ecrets', 403], ['/api/%761/secrets', 403], ['/api/v1/secretsx', 200], ['/clusters/a/x', 200], ['/clusters/b/x', 403]
  ]
  for (const [path, expected] of cases) t.equal(status(await rawHttp(s.url, get(path))), expected, path)
  t.equal(s.reached(), 4)
})

t.test('INBOUND_KEY_FILE is read once at start; the key is never forwarded', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-key-'))
  writeFileSync(join(dir, 'key'), 'file-Inbound-Key-42\n')
  const s = await stack(t, { BEARER_PROXY_INBOUND_KEY_FILE: join(dir, 'key') })
  t.equal(status(await rawHttp(s.url, get('/x'))), 403)
  const ok = await rawHttp(s.url, get('/x', 'Proxy-Authorization: Bearer file-Inbound-Key-42\r\n'))
  t.equal(status(ok), 200)
  t.notOk('proxy-authorization' in (s.admin.seen[0]?.headers ?? {}))
  t.equal(status(await rawHttp(s.url, get('/-/metrics'))), 403, 'metrics on the main listener need the key')
})

t.test('SOCKET: a unix socket with mode 0600, a stale socket file replaced', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-sock-'))
  const path = join(dir, 'proxy.sock')
  execFileSync('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(path)})`])
  t.ok(statSync(path).isSocket(), 'a stale socket is there')
  const s = await stack(t, { BEARER_PROXY_SOCKET: path })
  t.equal(s.url, path)
  t.equal(statSync(path).mode & 0o777, 0o600)
  const answer = await new Promise<number>((resolve, reject) => {
    httpGet({ socketPath: path, path: '/x', headers: { host: 'localhost' } }, (res) => { res.resume(); resolve(res.statusCode ?? 0) }).on('error', reject)
  })
  t.equal(answer, 200)
})

t.test('ADMIN_ADDRESS: a second listener serving only /-/', async (t) => {
  const s = await stack(t, { BEARER_PROXY_ADMIN_ADDRESS: '127.0.0.1:0', BEARER_PROXY_INBOUND_KEY: 'main-Listener-Key-7' })
  const bound = s.proxy.admin?.server.address() as AddressInfo
  const admin = `http://127.0.0.1:${bound.port}`
  await afterFetch(s.proxy.tokens, () => s.proxy.tokens.current() !== undefined)
  t.equal((await request(`${admin}/-/ready`)).statusCode, 200)
  const metrics = await request(`${admin}/-/metrics`, { headers: { host: '10.0.0.9:9090' } })
  t.equal(metrics.statusCode, 200, 'Prometheus scrapes without the inbound key, by pod address')
  await metrics.body.dump()
  for (const path of ['/x', '/clusters/a/x', '/api/v1/jobs']) {
    const response = await request(`${admin}${path}`)
    t.equal(response.statusCode, 404, path)
    await response.body.dump()
  }
  t.equal(s.reached(), 0)
})

t.test('/-/metrics: requests by route and status, latency, token fetches and expiry; no paths, no tokens', async (t) => {
  const s = await stack(t, { BEARER_PROXY_ALLOWED_HOSTS: '*' })
  await rawHttp(s.url, get('/api/v1/secret-project-name?token=QueryTokenValue'))
  await rawHttp(s.url, get('/clusters/a/jobs'))
  await rawHttp(s.url, get('/clusters/zzz/jobs'))
  const response = await request(`${s.url}/-/metrics`)
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /text\/plain/)
  const text = await response.body.text()
  t.match(text, /bearer_proxy_requests_total\{upstream="admin",status="200"\} 1/)
  t.match(text, /bearer_proxy_requests_total\{upstream="a",status="200"\} 1/)
  t.match(text, /bearer_proxy_requests_total\{upstream="none",status="404"\} 1/)
  t.match(text, /bearer_proxy_request_duration_seconds_bucket\{le="0.1",upstream="admin"\} 1/)
  t.match(text, /bearer_proxy_token_fetches_total\{credentials="default",result="success"\} 1/)
  t.match(text, /bearer_proxy_token_fetches_total\{credentials="default",result="failure"\} 0/)
  const expiry = Number(/^bearer_proxy_token_expiry_seconds\{credentials="default"\} (\S+)$/m.exec(text)?.[1])
  t.ok(expiry > 50 && expiry <= 60, `seconds until expiry: ${expiry}`)
  t.notMatch(text, /secret-project-name|QueryTokenValue|zzz/)
  const token = s.proxy.tokens.current()?.authorization.slice(7) ?? 'none'
  t.notOk(text.includes(token.split('.')[1] as string), 'no token')
})

t.test('outbound TLS: untrusted certificates are refused; CA_FILE trusts them; INSECURE_SKIP_VERIFY warns', async (t) => {
  const pki = makePki()
  const service = await startTlsService(t, pki, 'tls-token')
  const origin = service.origin
  const env = { BEARER_PROXY_TOKEN_URL: `${origin}/token`, BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_UPSTREAM: origin, BEARER_PROXY_PORT: '0' }

  const noCa = await startTestProxy(t, env)
  await afterFetch(noCa.proxy.tokens, () => noCa.logs.events('token_failed').length > 0)
  t.match(noCa.logs.events('token_failed')[0], { error: /unreachable: (SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|DEPTH_ZERO_SELF_SIGNED_CERT)/ })

  const withCa = await startTestProxy(t, { ...env, BEARER_PROXY_CA_FILE: pki.caFile })
  const trusted = await request(`${withCa.url}/x`)
  t.equal(trusted.statusCode, 200)
  t.equal(await trusted.body.text(), 'upstream saw Bearer tls-token')

  const insecure = await startTestProxy(t, { ...env, BEARER_PROXY_INSECURE_SKIP_VERIFY: 'true' })
  t.equal(insecure.logs.events('tls_verification_disabled').length, 1, 'a warning at start')
  const skipped = await request(`${insecure.url}/x`)
  t.equal(skipped.statusCode, 200)
  await skipped.body.dump()

  // A reachable token endpoint, an untrusted upstream: 502, and the request was never sent.
  const tokens = await startTokenEndpoint(t, () => ({ body: { access_token: 'plain-token', expires_in: 60 } }))
  const mixed = await startTestProxy(t, { ...env, BEARER_PROXY_TOKEN_URL: `${tokens.url}/token` })
  const bad = await request(`${mixed.url}/x`)
  t.equal(bad.statusCode, 502)
  t.match(await bad.body.json(), { error: 'upstream_unreachable', message: /presented a TLS certificate that is not trusted/ })
  t.equal(service.requests(), 4, 'only the two token requests and the two calls with a trusted or ignored certificate reached it')
})

t.test('HTTPS_PROXY: every outbound call goes through the proxy in the environment', async (t) => {
  const pki = makePki()
  const { origin } = await startTlsService(t, pki, 'via-proxy')
  const tunnels: string[] = []
  const outbound = createHttpServer()
  outbound.on('connect', (req, client) => {
    tunnels.push(req.url ?? '')
    const [host, port] = (req.url ?? '').split(':')
    const target = connect(Number(port), host, () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      target.pipe(client).pipe(target)
    })
    target.on('error', () => client.destroy())
    client.on('error', () => target.destroy())
  })
  await new Promise<void>((resolve) => outbound.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { outbound.close() })

  process.env.HTTPS_PROXY = `http://127.0.0.1:${(outbound.address() as AddressInfo).port}`
  t.teardown(() => { delete process.env.HTTPS_PROXY })
  const viaProxy = await startTestProxy(t, {
    BEARER_PROXY_TOKEN_URL: `${origin}/token`, BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's',
    BEARER_PROXY_UPSTREAM: origin, BEARER_PROXY_PORT: '0', BEARER_PROXY_CA_FILE: pki.caFile
  })
  const { url } = viaProxy
  const response = await request(`${url}/x`)
  const text = await response.body.text()
  t.equal(response.statusCode, 200, text)
  t.equal(text, 'upstream saw Bearer via-proxy')
  t.ok(tunnels.length >= 1 && tunnels.every((tunnel) => tunnel === new URL(origin).host), `tunnels: ${tunnels.join(', ')}`)

  const before = tunnels.length
  process.env.NO_PROXY = '127.0.0.1'
  t.teardown(() => { delete process.env.NO_PROXY })
  const direct = await startTestProxy(t, { BEARER_PROXY_TOKEN_URL: `${origin}/token`, BEARER_PROXY_CLIENT_ID: 'c',
    BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_UPSTREAM: origin, BEARER_PROXY_PORT: '0', BEARER_PROXY_CA_FILE: pki.caFile })
  const plain = await request(`${direct.url}/x`)
  t.equal(plain.statusCode, 200)
  await plain.body.dump()
  t.equal(tunnels.length, before, 'NO_PROXY hosts are reached directly')
})
