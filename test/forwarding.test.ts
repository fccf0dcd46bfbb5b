import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadConfig } from '../src/config.js'
import { createLogger } from '../src/log.js'
import { startProxy } from '../src/server.js'
import { baseEnv, CLIENT, httpRequest, LogCapture, rawHttp, startApiOf, startIdentity, startTestProxy, afterFetch } from './helpers/stack.js'

t.test('a request through the proxy reaches the API with the token added and the client credentials removed', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const { url } = await startTestProxy(t, baseEnv(idp, api))

  const response = await httpRequest(`${url}/api/v1/items?b=2&a=%20x&flag&a=1`, {
    headers: {
      authorization: 'Bearer client-supplied',
      'proxy-authorization': 'Bearer nope',
      'keep-alive': 'timeout=5',
      te: 'trailers',
      'x-custom': 'kept',
      'proxy-connection': 'keep-alive'
    }
  })
  t.equal(response.status, 200)
  t.equal(response.headers['x-upstream'], 'yes', 'upstream headers pass through')
  const echo = JSON.parse(response.body) as { url: string, headers: Record<string, string>, sub: string }
  t.equal(echo.url, '/api/v1/items?b=2&a=%20x&flag&a=1', 'path and query string verbatim')
  t.equal(echo.sub, CLIENT.clientId, 'the token was signed by the identity provider for our client')
  t.match(echo.headers.authorization, /^Bearer ey/, 'a JWT bearer token replaced the client one')
  t.equal(echo.headers.host, new URL(api.url).host, 'Host is the upstream\'s')
  t.equal(echo.headers['x-custom'], 'kept')
  for (const dropped of ['proxy-authorization', 'keep-alive', 'te', 'proxy-connection']) {
    t.notOk(dropped in echo.headers, `${dropped} is not forwarded`)
  }
})

t.test('POST, PUT and PATCH bodies arrive intact, whatever their content type', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const { url } = await startTestProxy(t, baseEnv(idp, api))
  const cases: Array<[string, string, string | Buffer]> = [
    ['POST', 'application/json; charset=utf-8', '{"a":[1,2,3]}'],
    ['PUT', 'text/plain', 'x'.repeat(2 * 1024 * 1024)],
    ['PATCH', 'multipart/form-data; boundary=XyZ', '--XyZ\r\ncontent-disposition: form-data; name="f"\r\n\r\nv\r\n--XyZ--\r\n'],
    ['POST', 'application/octet-stream', Buffer.from([0, 1, 2, 255, 254])]
  ]
  for (const [method, type, body] of cases) {
    const response = await request(`${url}/upload`, { method: method as 'POST', headers: { 'content-type': type }, body })
    const echo = await response.body.json() as { bodyLength: number, headers: Record<string, string> }
    t.equal(response.statusCode, 200, `${method} ${type}`)
    t.equal(echo.bodyLength, Buffer.byteLength(body), `${method} ${type}: length`)
    t.equal(echo.headers['content-type'], type, `${method} ${type}: content-type kept with its parameters`)
  }
  const last = api.seen.at(-1)
  t.equal(last?.body, Buffer.from([0, 1, 2, 255, 254]).toString('utf8'))
})

t.test('upstream statuses, headers and bodies pass through unchanged', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  api.routes.set('/teapot', (_req, res) => {
    res.writeHead(418, { 'content-type': 'text/plain', 'set-cookie': ['a=1; HttpOnly', 'b=2'], 'x-rate': '7' }).end('short and stout')
  })
  api.routes.set('/moved', (_req, res) => {
    res.writeHead(302, { location: `${api.url}/elsewhere?x=1` }).end()
  })
  const { url } = await startTestProxy(t, baseEnv(idp, api))

  const teapot = await request(`${url}/teapot`)
  t.equal(teapot.statusCode, 418)
  t.same(teapot.headers['set-cookie'], ['a=1; HttpOnly', 'b=2'])
  t.equal(teapot.headers['x-rate'], '7')
  t.equal(await teapot.body.text(), 'short and stout')

  const moved = await request(`${url}/moved`)
  t.equal(moved.statusCode, 302)
  t.equal(moved.headers.location, '/elsewhere?x=1', 'a Location on the upstream points back at the proxy')
  await moved.body.dump()
})

t.test('an upstream with a base path: every target lands below it, with or without a trailing slash, at / and under a prefix', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const seen = async (base: string, target: string): Promise<string> => {
    const { url } = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_UPSTREAM: `${api.url}${base}` })
    const answer = await request(`${url}${target}`)
    t.equal(answer.statusCode, 200, `${base} ${target}`)
    return (await answer.body.json() as { url: string }).url
  }
  t.equal(await seen('/v2', '/things?x=1'), '/v2/things?x=1')
  t.equal(await seen('/v2', '/'), '/v2/')
  t.equal(await seen('/v2/', '/things/'), '/v2/things/')
  t.equal(await seen('/a/b', '/c/d?e'), '/a/b/c/d?e')
  t.equal(await seen('/v2', '/?q=1'), '/v2/?q=1')
  t.equal(api.seen.every((request) => request.authorized), true)

  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-base-'))
  const file = join(dir, 'routes.yaml')
  writeFileSync(file, `port: 0
credentials:
  idp: { tokenUrl: "${idp.tokenUrl}", clientId: ${CLIENT.clientId}, clientSecret: ${CLIENT.clientSecret} }
routes:
  - { prefix: /one, upstream: "${api.url}/v1", credentials: idp }
  - { prefix: /two, upstream: "${api.url}/v2/", credentials: idp }
  - { prefix: /three, upstream: "${api.url}", credentials: idp }
`)
  const config = loadConfig({ configFile: file, env: {} })
  const proxy = await startProxy(config, createLogger('silent', new LogCapture()))
  t.teardown(() => proxy.close())
  const through = async (target: string): Promise<string> => {
    const answer = await request(`${proxy.address}${target}`)
    t.equal(answer.statusCode, 200, target)
    return (await answer.body.json() as { url: string }).url
  }
  t.equal(await through('/one/x?y=1'), '/v1/x?y=1')
  t.equal(await through('/one'), '/v1/', 'the prefix alone is the base path with a slash, as for WebSocket upgrades')
  t.equal(await through('/one?y'), '/v1/?y')
  t.equal(await through('/two/x'), '/v2/x')
  t.equal(await through('/three/x'), '/x')
  t.equal(await through('/three?z'), '/?z')
})

t.test('clusters are served under /clusters/<name>/ with their own base path; unknown ones are 404', async (t) => {
  const idp = await startIdentity(t)
  const admin = await startApiOf(t, idp)
  const clusterA = await startApiOf(t, idp)
  const clusterB = await startApiOf(t, idp)
  const { url } = await startTestProxy(t, {
    ...baseEnv(idp, admin),
    BEARER_PROXY_CLUSTERS: `gpu-a=${clusterA.url}/researcher/api, gpu-b=${clusterB.url}`
  })

  const a = await request(`${url}/clusters/gpu-a/v1/jobs?limit=5`)
  t.equal(a.statusCode, 200)
  t.equal((await a.body.json() as { url: string }).url, '/researcher/api/v1/jobs?limit=5')
  const b = await request(`${url}/clusters/gpu-b/`)
  t.equal((await b.body.json() as { url: string }).url, '/')
  t.equal(clusterB.seen.at(-1)?.authorized, true, 'the same token works for every cluster')

  const unknown = await request(`${url}/clusters/gpu-c/v1/jobs`)
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.headers['content-type'], 'application/json; charset=utf-8')
  const body = await unknown.body.json() as { error: string, requestId: string }
  t.equal(body.error, 'unknown_cluster')
  t.ok(body.requestId)
  t.equal(admin.seen.length, 0, 'an unknown cluster never falls through to the admin API')
})

t.test('/-/ready is 503 until a token is held, then 200 with its expiry and never the token', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 120 })
  const api = await startApiOf(t, idp)
  idp.mode = 'down'
  const { url, proxy } = await startTestProxy(t, baseEnv(idp, api), { backoffMs: 50 })
  const before = await request(`${url}/-/ready`)
  t.equal(before.statusCode, 503)
  t.match(await before.body.json(), { ready: false })

  const refused = await request(`${url}/api/v1/anything`)
  t.equal(refused.statusCode, 503)
  t.ok(Number(refused.headers['retry-after']) >= 1, 'Retry-After in seconds')
  t.match(await refused.body.json(), { error: 'token_unavailable', message: /token endpoint http:\/\/127\.0\.0\.1:\d+\/token is unreachable/ })
  t.equal(api.seen.length, 0, 'nothing is forwarded without a token')

  idp.mode = 'normal'
  await afterFetch(proxy.tokens, () => proxy.tokens.current() !== undefined, 5000, 'the token endpoint to recover')
  const ready = await request(`${url}/-/ready`)
  t.equal(ready.statusCode, 200)
  const body = await ready.body.json() as { ready: boolean, tokenExpiresAt: string }
  t.equal(body.ready, true)
  t.ok(Math.abs(Date.parse(body.tokenExpiresAt) - Date.now() - 120_000) < 5000, 'expiry about 120 s ahead')
  t.notMatch(JSON.stringify(body), proxy.tokens.current()?.authorization.slice(7) as string)
  t.equal((await request(`${url}/-/healthy`)).statusCode, 200)
})

t.test('an upstream that refuses connections is 502, one that sends no headers in time is 504', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const closed = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const deadPort = (closed.address() as AddressInfo).port
  await new Promise<void>((resolve) => closed.close(() => resolve()))
  const silent = createServer((socket) => { socket.on('data', () => {}) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { silent.close() })

  const { url } = await startTestProxy(t, {
    ...baseEnv(idp, api),
    BEARER_PROXY_TIMEOUT: '0.5',
    BEARER_PROXY_CLUSTERS: `dead=http://127.0.0.1:${deadPort},silent=http://127.0.0.1:${(silent.address() as AddressInfo).port}`
  })
  const dead = await request(`${url}/clusters/dead/x`)
  t.equal(dead.statusCode, 502)
  t.match(await dead.body.json(), { error: 'upstream_unreachable', message: /upstream dead .* refused the connection/ })

  const started = Date.now()
  const slow = await request(`${url}/clusters/silent/x`)
  const waited = Date.now() - started
  t.equal(slow.statusCode, 504)
  t.match(await slow.body.json(), { error: 'upstream_timeout', message: /within 0.5 s/ })
  t.ok(waited >= 450 && waited < 3000, `answered at the timeout (${waited} ms)`)

  const still = await request(`${url}/fine`)
  t.equal(still.statusCode, 200, 'the proxy keeps serving other requests')
  await still.body.dump()
})

t.test('INBOUND_KEY: clients must send Proxy-Authorization: Bearer <key>; probes need none; the key is never forwarded', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const { url } = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_INBOUND_KEY: 'inbound-K3y-value' })
  const missing = await request(`${url}/x`)
  t.equal(missing.statusCode, 403)
  t.match(await missing.body.json(), { error: 'forbidden' })
  const wrong = await request(`${url}/x`, { headers: { 'proxy-authorization': 'Bearer inbound-K3y-valuf' } })
  t.equal(wrong.statusCode, 403)
  await wrong.body.dump()
  const inAuthorization = await request(`${url}/x`, { headers: { authorization: 'Bearer inbound-K3y-value' } })
  t.equal(inAuthorization.statusCode, 403, 'a key sent in Authorization does not count')
  await inAuthorization.body.dump()
  t.equal(api.seen.length, 0, 'nothing reached the API')

  const right = await request(`${url}/x`, { headers: { 'proxy-authorization': 'Bearer inbound-K3y-value' } })
  t.equal(right.statusCode, 200)
  const echo = await right.body.json() as { headers: Record<string, string> }
  t.notOk('proxy-authorization' in echo.headers)
  for (const probe of ['/-/healthy', '/-/ready']) {
    const response = await request(`${url}${probe}`)
    t.equal(response.statusCode, 200, `${probe} needs no key`)
    await response.body.dump()
  }
})

t.test('never an open proxy: absolute-form targets are 400, CONNECT is 405, nothing reaches another host', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const { url } = await startTestProxy(t, baseEnv(idp, api))
  const raw = async (text: string): Promise<string> => await rawHttp(url, text)
  t.match(await raw(`GET ${api.url}/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`), /^HTTP\/1.1 400[^]*"error":"bad_request"/)
  t.match(await raw('GET //evil.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'), /^HTTP\/1.1 400/)
  t.match(await raw('CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n'), /^HTTP\/1.1 405[^]*"error":"method_not_allowed"/)
  t.equal(api.seen.length, 0)
})

t.test('/<cluster>/… instead of /clusters/<cluster>/…: a hint in the log, or in the proxy\'s own 404 when there is no admin API', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const cluster = await startApiOf(t, idp)
  api.routes.set('/gpu/api/v1/jobs', (_req, res) => { res.writeHead(404, { 'content-type': 'application/json' }).end('{"code":404,"message":"no such path"}') })
  const { url, logs } = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_CLUSTERS: `gpu=${cluster.url}` })
  for (let i = 0; i < 2; i++) {
    const response = await request(`${url}/gpu/api/v1/jobs?x=${i}`)
    t.equal(response.statusCode, 404)
    t.same(await response.body.json(), { code: 404, message: 'no such path' }, 'the admin API\'s own 404, unchanged')
  }
  t.same(logs.events('cluster_path_hint').map((entry) => entry.meant), ['/clusters/gpu/…'], 'one hint, however many such requests')
  const other = await request(`${url}/gpux/y`)
  await other.body.dump()
  t.equal(logs.events('cluster_path_hint').length, 1, 'no hint for a name that is not a cluster')

  const clustersOnly = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_UPSTREAM: '', BEARER_PROXY_CLUSTERS: `gpu=${cluster.url}` })
  const hinted = await request(`${clustersOnly.url}/gpu/api/v1/jobs`)
  t.equal(hinted.statusCode, 404)
  t.match(await hinted.body.json(), { error: 'not_found', message: 'nothing is served at this path; did you mean /clusters/gpu/…?' })
  const plain = await request(`${clustersOnly.url}/elsewhere`)
  t.match(await plain.body.json(), { error: 'not_found', message: 'nothing is served at this path' })
  t.equal(cluster.seen.length, 0, 'nothing reached the cluster')
})
