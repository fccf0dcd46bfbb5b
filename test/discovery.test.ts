import { once } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createLocalJWKSet, jwtVerify } from 'jose'
import t from 'tap'
import { request } from 'undici'
import { WebSocketServer } from 'ws'
import { loadConfig } from '../src/config.js'
import { servableClusters } from '../src/cluster-discovery.js'
import { createLogger } from '../src/log.js'
import { startProxy } from '../src/server.js'
import { type Emulator, RUNAI, runaiEnv, startRunai } from './helpers/emulators.js'
import { assertNoSecret, fragments } from './helpers/secrets.js'
import { bounded, LogCapture, rawHttp, runCli, startTestProxy, wsRoundTrip } from './helpers/stack.js'

const UUID = {
  a: '0b9f7a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b',
  b: '1c0a8b5f-2d3e-4f60-9b0c-1d2e3f4a5b6c',
  c: '2d1b9c60-3e4f-4071-8c1d-2e3f4a5b6c7d'
}
const env = (runai: Emulator, extra: Record<string, string> = {}): Record<string, string> => runaiEnv(runai, { BEARER_PROXY_LOG_LEVEL: 'debug', ...extra })

/** The list of a control plane with two usable clusters and one of each kind that is not. */
function listing (runai: Emulator): unknown[] {
  return [
    { uuid: UUID.a, tenantId: 1, name: 'gpu-a', domain: `${runai.url}/a`, status: { state: 'Connected' }, version: '2.22.0', createdAt: '2026-01-01T00:00:00Z' },
    { uuid: UUID.b, tenantId: 1, name: 'gpu-b', domain: `${runai.url}/b`, status: { state: 'Disconnected' }, version: '2.21.3' },
    { uuid: '3e2c0d71-4f50-4182-9d2e-3f4a5b6c7d8e', tenantId: 1, name: 'no-domain', domain: null },
    { uuid: '4f3d1e82-5061-4293-8e3f-4a5b6c7d8e9f', tenantId: 1, name: '../escape', domain: `${runai.url}/x` },
    { uuid: '5a4e2f93-6172-43a4-9f40-5b6c7d8e9fa0', tenantId: 1, name: 'with-creds', domain: 'https://user:Pa55-in-domain@gpu.example' },
    { uuid: '6b5f30a4-7283-44b5-8051-6c7d8e9fa0b1', tenantId: 1, name: 'ftp', domain: 'ftp://gpu.example' },
    { uuid: UUID.a, tenantId: 1, name: 'gpu-a-again', domain: `${runai.url}/again` }
  ]
}

t.test('AUTH=runai without CLUSTERS: clusters are read from /api/v1/clusters and served by name and by uuid', async (t) => {
  const runai = await startRunai(t)
  runai.clusters = listing(runai)
  const { url, proxy, logs } = await startTestProxy(t, env(runai))
  await bounded(once(proxy.discovery as NonNullable<typeof proxy.discovery>, 'change'), 5000, 'the first list')

  for (const [path, served] of [['/clusters/gpu-a/api/v1/jobs?owner=me', '/a/api/v1/jobs'], [`/clusters/${UUID.b}/api/v1/nodes`, '/b/api/v1/nodes'], ['/clusters/gpu-b', '/b/']] as Array<[string, string]>) {
    const answer = await request(`${url}${path}`)
    t.equal(answer.statusCode, 200, path)
    t.same(await answer.body.json(), { path: served })
  }
  const unknown = await request(`${url}/clusters/gpu-z/x`)
  t.equal(unknown.statusCode, 404)
  t.match(await unknown.body.json(), { error: 'unknown_cluster', message: 'no cluster named "gpu-z" is configured (known: gpu-a, gpu-b)' })
  const skipped = await request(`${url}/clusters/no-domain/x`)
  t.equal(skipped.statusCode, 404, 'a cluster that is not served is unknown')
  await skipped.body.dump()

  // Location rewriting, metrics by cluster name, /-/ready's routes.
  const redirect = await request(`${url}/clusters/gpu-a/go/redirect`)
  t.equal(redirect.statusCode, 302)
  t.equal(redirect.headers.location, '/clusters/gpu-a/go/elsewhere')
  await redirect.body.dump()
  const metrics = await (await request(`${url}/-/metrics`)).body.text()
  t.match(metrics, /bearer_proxy_requests_total\{upstream="gpu-a",status="200"\} 1/)
  t.match(metrics, /bearer_proxy_requests_total\{upstream="gpu-b",status="200"\} 2/)
  t.match(await (await request(`${url}/-/ready`)).body.json(), { ready: true, routes: ['admin', 'gpu-a', 'gpu-b'] })

  // The guard applies to discovered clusters as to configured ones: an encoded dot segment is refused, nothing sent.
  const before = runai.served.length
  const hostile = await rawHttp(url, 'GET /clusters/gpu-a/%2e%2e/api/v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  t.match(hostile, /^HTTP\/1\.1 400 /)
  t.equal(runai.served.length, before, 'the upstream received nothing')

  t.same(logs.events('cluster_skipped').map((line) => [line.cluster, line.reason]), [
    ['no-domain', 'it has no domain'],
    ['with uuid 4f3d1e82-5061-4293-8e3f-4a5b6c7d8e9f', 'its name is not a safe path segment (letters, digits, ".", "_", "-")'],
    ['with-creds', 'its domain carries credentials'],
    ['ftp', 'its domain is not an http(s) URL'],
    ['gpu-a-again', 'its name or uuid (compared without case) is already served by another cluster']
  ], 'each skipped cluster said once, with why')
  t.match(logs.events('clusters_discovered'), [{ added: ['gpu-a', 'gpu-b'], removed: [] }])
  t.equal(runai.clusterReads, 1, 'read once at start')
  assertNoSecret(t, 'the log', logs.text, fragments([RUNAI.client.secret, 'Pa55-in-domain', ...runai.issued]))
})

t.test('the list is read again: a cluster added is served, one removed stops being served, a failed read keeps the last list', async (t) => {
  const runai = await startRunai(t)
  runai.clusters = listing(runai).slice(0, 1)
  const { url, proxy, logs } = await startTestProxy(t, env(runai), { discovery: { intervalMs: 60_000, onDemandMs: 0 } })
  const discovery = proxy.discovery as NonNullable<typeof proxy.discovery>
  await bounded(once(discovery, 'change'), 5000, 'the first list')

  // A request naming a cluster not (yet) known reads the list again, and is served if it is there now.
  runai.clusters = [...listing(runai).slice(0, 1), { uuid: UUID.c, name: 'gpu-c', domain: `${runai.url}/c`, status: { state: 'Connected' } }]
  const added = await request(`${url}/clusters/gpu-c/api`)
  t.equal(added.statusCode, 200)
  t.same(await added.body.json(), { path: '/c/api' })
  t.match(logs.events('clusters_discovered').at(-1), { added: ['gpu-c'], removed: [] })

  // Removed: no longer served once the list says so.
  runai.clusters = [{ uuid: UUID.c, name: 'gpu-c', domain: `${runai.url}/c` }]
  await discovery.refresh()
  const gone = await request(`${url}/clusters/gpu-a/api`)
  t.equal(gone.statusCode, 404)
  t.match(await gone.body.json(), { error: 'unknown_cluster', message: /known: gpu-c\)/ })
  t.match(logs.events('clusters_discovered').at(-1), { added: [], removed: ['gpu-a'] })

  // The control plane fails: the last good list keeps serving.
  runai.clusters = 503
  await discovery.refresh()
  t.match(logs.events('cluster_discovery_failed').at(-1), { error: `${runai.url}/api/v1/clusters answered 503` })
  const kept = await request(`${url}/clusters/gpu-c/api`)
  t.equal(kept.statusCode, 200)
  await kept.body.dump()
})

t.test('requests for unknown clusters read the list at most every 30 s', async (t) => {
  const runai = await startRunai(t)
  runai.clusters = listing(runai).slice(0, 1)
  const { url, proxy } = await startTestProxy(t, env(runai))
  await bounded(once(proxy.discovery as NonNullable<typeof proxy.discovery>, 'change'), 5000, 'the first list')
  for (let i = 0; i < 5; i++) {
    const answer = await request(`${url}/clusters/nope-${i}/x`)
    t.equal(answer.statusCode, 404)
    await answer.body.dump()
  }
  t.equal(runai.clusterReads, 1, 'no read for unknown names within 30 s of the last')
})

t.test('a discovered cluster carries WebSocket upgrades with the token', async (t) => {
  const runai = await startRunai(t)
  const keys = createLocalJWKSet(runai.jwks)
  const server = createServer((_req, res) => res.end())
  const upgrades: string[] = []
  const wss = new WebSocketServer({
    server,
    verifyClient: (info, done) => {
      upgrades.push(info.req.url ?? '')
      jwtVerify(/^Bearer (.+)$/.exec(info.req.headers.authorization ?? '')?.[1] ?? '', keys, { issuer: 'runai' }).then(() => done(true), () => done(false, 401))
    }
  })
  wss.on('connection', (socket) => socket.on('message', (data) => socket.send(`echo ${String(data)}`)))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { wss.close(); server.closeAllConnections(); server.close() })
  runai.clusters = [{ uuid: UUID.a, name: 'gpu-a', domain: `http://127.0.0.1:${(server.address() as AddressInfo).port}/ws` }]
  const { url, proxy } = await startTestProxy(t, env(runai))
  await bounded(once(proxy.discovery as NonNullable<typeof proxy.discovery>, 'change'), 5000, 'the first list')
  t.equal(await wsRoundTrip(`${url.replace('http', 'ws')}/clusters/gpu-a/attach`, 'hi'), 'echo hi')
  t.same(upgrades, ['/ws/attach'])
})

t.test('CLUSTERS given wins (no discovery); CLUSTERS=auto asks for it with another flavour', async (t) => {
  const runai = await startRunai(t)
  runai.clusters = listing(runai)
  const configured = await startTestProxy(t, env(runai, { BEARER_PROXY_CLUSTERS: `mine=${runai.url}/mine` }))
  t.equal(configured.proxy.discovery, undefined)
  const mine = await request(`${configured.url}/clusters/mine/x`)
  t.equal(mine.statusCode, 200)
  await mine.body.dump()
  const notListed = await request(`${configured.url}/clusters/gpu-a/x`)
  t.equal(notListed.statusCode, 404)
  await notListed.body.dump()
  t.equal(runai.clusterReads, 0)

  // Tokens from the control plane's OAuth endpoint as a plain OIDC token URL, clusters asked for explicitly.
  const auto = await startTestProxy(t, env(runai, { BEARER_PROXY_AUTH: 'oidc', BEARER_PROXY_TOKEN_URL: `${runai.url}/api/v2/token`, BEARER_PROXY_CLUSTERS: 'auto' }))
  await bounded(once(auto.proxy.discovery as NonNullable<typeof auto.proxy.discovery>, 'change'), 5000, 'the first list')
  const found = await request(`${auto.url}/clusters/gpu-b/x`)
  t.equal(found.statusCode, 200)
  await found.body.dump()

  const noUpstream = await runCli(['serve'], { BEARER_PROXY_TOKEN_URL: `${runai.url}/api/v2/token`, BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_CLUSTERS: 'auto' })
  t.equal(noUpstream.code, 2)
  t.match(noUpstream.stderr, /BEARER_PROXY_CLUSTERS: auto reads the clusters from the Run:ai control plane at BEARER_PROXY_UPSTREAM, which is not set/)
})

t.test('bearer-proxy clusters prints what would be served; exit 1 with the reason when the list cannot be read', async (t) => {
  const runai = await startRunai(t)
  runai.clusters = listing(runai)
  const result = await runCli(['clusters'], env(runai, { BEARER_PROXY_LOG_LEVEL: '' }))
  t.equal(result.code, 0, result.stderr)
  const lines = result.stdout.trim().split('\n')
  t.match(lines[0], /^NAME\s+UUID\s+URL\s+STATUS$/)
  t.match(lines[1], new RegExp(`^gpu-a\\s+${UUID.a}\\s+${runai.url}/a\\s+Connected$`))
  t.match(lines[2], new RegExp(`^gpu-b\\s+${UUID.b}\\s+${runai.url}/b\\s+Disconnected$`))
  t.equal(lines.length, 3)
  t.match(result.stderr, /not served: no-domain: it has no domain/)
  t.notMatch(result.stderr + result.stdout, /Pa55-in-domain/)

  runai.clusters = 403
  const refused = await runCli(['clusters'], env(runai, { BEARER_PROXY_LOG_LEVEL: '' }))
  t.equal(refused.code, 1)
  t.equal(refused.stderr, `bearer-proxy: ${runai.url}/api/v1/clusters answered 403\n`)

  const configured = await runCli(['clusters'], env(runai, { BEARER_PROXY_CLUSTERS: `mine=${runai.url}/mine`, BEARER_PROXY_LOG_LEVEL: '' }))
  t.equal(configured.code, 0)
  t.match(configured.stdout, new RegExp(`^mine\\s+-\\s+${runai.url}/mine\\s+configured$`, 'm'))
})

t.test('a cluster skipped for its name is named by its uuid, or else its place in the list, never by the name', async (t) => {
  const list = servableClusters([
    { uuid: UUID.a, name: 'fine', domain: 'https://a.example' },
    { uuid: UUID.b.toUpperCase(), name: '../\u001b[2Jescape', domain: 'https://b.example' },
    { name: 'no uuid / bad name', domain: 'https://c.example' },
    { uuid: 'not-a-uuid', name: '', domain: 'https://d.example' }
  ], new URL('https://runai.example'))
  t.same(list.skipped.map((cluster) => cluster.name), [`with uuid ${UUID.b}`, 'number 3 of the list', 'number 4 of the list'])
  t.notMatch(JSON.stringify(list.skipped), /escape|bad name/)
})

t.test('a discovered domain must be https when the control plane is', async (t) => {
  const list = servableClusters([
    { uuid: UUID.a, name: 'plain', domain: 'http://gpu.example' },
    { uuid: UUID.b, name: 'secure', domain: 'https://gpu.example/base?x=1#f' },
    { uuid: UUID.c, name: 'bare', domain: 'gpu-c.example', status: { state: 'Conn\u001b[31mected' } }
  ], new URL('https://runai.example'))
  t.equal(list.clusters[1]?.status, 'unknown', 'a state that is not a short word is not repeated')
  t.same(list.clusters.map((cluster) => [cluster.name, cluster.url.href]), [['secure', 'https://gpu.example/base'], ['bare', 'https://gpu-c.example/']])
  t.same(list.skipped, [{ name: 'plain', reason: 'its domain is plain http while the control plane is https' }])
})

t.test('config/runai.env, filled in, works against a control plane of today: check, then clusters found by themselves', async (t) => {
  const { mkdtempSync, readFileSync, writeFileSync } = await import('node:fs')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const runai = await startRunai(t)
  runai.clusters = listing(runai)
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-runai-env-'))
  writeFileSync(join(dir, 'secret'), RUNAI.client.secret)
  const example = readFileSync(new URL('../config/runai.env', import.meta.url), 'utf8')
  const filled = example
    .replace(/^BEARER_PROXY_UPSTREAM=.*$/m, `BEARER_PROXY_UPSTREAM=${runai.url}`)
    .replace(/^BEARER_PROXY_CLIENT_ID=.*$/m, `BEARER_PROXY_CLIENT_ID=${RUNAI.client.id}`)
    .replace(/^BEARER_PROXY_CLIENT_SECRET_FILE=.*$/m, `BEARER_PROXY_CLIENT_SECRET_FILE=${join(dir, 'secret')}`)
  t.not(filled, example, 'the example has the settings a user fills in')
  writeFileSync(join(dir, '.env'), filled)
  const check = await runCli(['check'], {}, { cwd: dir })
  t.equal(check.code, 0, check.stderr + check.stdout)
  t.equal(runai.calls[0]?.path, '/api/v2/token', 'the current token endpoint')
  const clusters = await runCli(['clusters'], {}, { cwd: dir })
  t.equal(clusters.code, 0, clusters.stderr)
  t.match(clusters.stdout, /^gpu-a\s/m)
})

t.test('a route\'s own clusters (--config): discovered or listed, served under <prefix>/clusters/ with the route\'s set; reload switches one to discovery', async (t) => {
  const [first, second] = [await startRunai(t), await startRunai(t)]
  first.clusters = [{ uuid: UUID.a, tenantId: 1, name: 'gpu-a', domain: `${first.url}/a` }]
  second.clusters = [{ uuid: UUID.c, tenantId: 1, name: 'gpu-c', domain: `${second.url}/c` }]
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-route-clusters-'))
  const file = join(dir, 'two-tenants.yaml')
  const yaml = (secondClusters: string): string => `port: 0
credentials:
  first: { auth: runai, upstream: "${first.url}", clientId: ${RUNAI.client.id}, clientSecret: ${RUNAI.client.secret} }
  second: { auth: runai, upstream: "${second.url}", clientId: ${RUNAI.client.id}, clientSecret: ${RUNAI.client.secret} }
routes:
  - { prefix: /first, credentials: first }
  - { prefix: /second, credentials: second, clusters: ${secondClusters} }
`
  writeFileSync(file, yaml(`{ gpu: "${second.url}/listed" }`))
  const proxy = await startProxy(loadConfig({ configFile: file, env: {} }), createLogger('silent', new LogCapture()), { discovery: { intervalMs: 60_000, onDemandMs: 0 } })
  t.teardown(() => proxy.close())
  const get = async (path: string): Promise<{ status: number, body: { path?: string, error?: string, message?: string } }> => {
    const answer = await request(`${proxy.address}${path}`)
    return { status: answer.statusCode, body: await answer.body.json() as { path?: string } }
  }

  // Each emulator accepts only its own tokens: a 200 is the route's own set's token.
  t.same(await get('/first/clusters/gpu-a/api/v1/jobs'), { status: 200, body: { path: '/a/api/v1/jobs' } }, 'discovered (a Run:ai set without clusters:)')
  t.same(await get(`/first/clusters/${UUID.a}/x`), { status: 200, body: { path: '/a/x' } }, 'by uuid too')
  t.same(await get('/second/clusters/gpu/api/v1/nodes'), { status: 200, body: { path: '/listed/api/v1/nodes' } }, 'listed')
  t.same(await get('/first/api/v1/projects'), { status: 200, body: { path: '/api/v1/projects' } }, 'the route\'s own API')
  const servedBefore = [first.served.length, second.served.length]
  const unknown = await get('/first/clusters/gpu-z/x')
  t.equal(unknown.status, 404)
  t.match(unknown.body, { error: 'unknown_cluster', message: 'no cluster named "gpu-z" is configured under /first/clusters/ (known: gpu-a)' })
  t.match(await get('/second/clusters/gpu-c/x'), { status: 404, body: { error: 'unknown_cluster' } }, 'listed clusters only: not discovered')
  t.match(await get('/clusters/gpu-a/x'), { status: 404, body: { error: 'unknown_cluster' } }, 'the top level has no clusters')
  // Over a raw socket: the route's clusters prefix encoded is refused, as /clusters/ is.
  for (const target of ['/first/%63lusters/gpu-a/x', '/first/clusters/gpu%2Da/x', '/fir%73t/clusters/gpu-a/x', '/first/clusters/%67pu-a']) {
    for (const upgrade of ['', 'Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n']) {
      // As a request, and as a WebSocket upgrade (which the same guard judges).
      const answer = await rawHttp(proxy.address, `GET ${target} HTTP/1.1\r\nHost: localhost\r\nConnection: ${upgrade === '' ? 'close' : 'Upgrade'}\r\n${upgrade}\r\n`)
      t.match(answer, /^HTTP\/1\.1 400 /, `${target}${upgrade === '' ? '' : ' (upgrade)'}`)
      t.match(answer, /encodes its \/first\/clusters\/<name> prefix/)
    }
  }
  t.same([first.served.length, second.served.length], servedBefore, 'an unknown cluster never reaches a control plane')
  t.equal(second.clusterReads, 0, 'a route that lists its clusters does not read them')
  t.match(await (await request(`${proxy.address}/-/ready`)).body.json(), { ready: true, routes: ['first', 'second', 'second/gpu', 'first/gpu-a'] })

  // Reloaded with clusters: auto, the second route reads its control plane's list.
  writeFileSync(file, yaml('auto'))
  const summary = await proxy.reconfigure(loadConfig({ configFile: file, env: {} }))
  t.same(summary.routes, { added: [], changed: ['second'], removed: ['second/gpu'] })
  t.same(await get('/second/clusters/gpu-c/api'), { status: 200, body: { path: '/c/api' } })
  t.ok(second.clusterReads > 0)
  t.match(await get('/second/clusters/gpu/x'), { status: 404, body: { error: 'unknown_cluster' } }, 'the listed cluster is gone')
  t.same(await get('/first/clusters/gpu-a/y'), { status: 200, body: { path: '/a/y' } }, 'the first route\'s discovery kept running')

  // The clusters command lists each route's, under where they are served, each with its route's set.
  const listed = await runCli(['clusters', '--config', file], {})
  t.equal(listed.code, 0, listed.stderr)
  t.match(listed.stdout, /^\/first\/clusters\/\nNAME +UUID +URL STATUS\ngpu-a +0b9f7a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b http:\/\/127\.0\.0\.1:\d+\/a .*\n\/second\/clusters\/\nNAME .*\ngpu-c +2d1b9c60/)
  writeFileSync(file, yaml(`{ gpu: "${second.url}/listed" }`))
  t.match((await runCli(['clusters', '--config', file], {})).stdout, /\/second\/clusters\/\ngpu +- +http:\/\/127\.0\.0\.1:\d+\/listed configured/)
})

t.test('a control plane that trickles its cluster list is cut off at TIMEOUT: clusters ends, and under serve a request for an unknown cluster is answered and the list read again', async (t) => {
  const { startTokenEndpoint } = await import('./helpers/token-endpoint.js')
  const { startEcho } = await import('./helpers/upstream.js')
  const cluster = await startEcho(t)
  let list: unknown[] | undefined
  const plane = await startTokenEndpoint(t, (call) => {
    if (call.path === '/api/v2/token') return { body: { access_token: 'plane-token', token_type: 'Bearer', expires_in: 3600 } }
    if (call.path === '/api/v1/clusters') return list === undefined ? { body: '', stream: 'trickle' } : { body: list }
    return { status: 404, body: {} }
  })
  const env = { ...runaiEnv({ url: plane.url } as Emulator), BEARER_PROXY_TIMEOUT: '1', BEARER_PROXY_LOG_LEVEL: 'silent' }
  const started = Date.now()
  const listed = await runCli(['clusters'], env)
  t.not(listed.code, 0)
  t.match(listed.stderr, /\/api\/v1\/clusters is unreachable: no answer in time/)
  t.ok(Date.now() - started < 10_000, 'the command ends')

  const { url } = await startTestProxy(t, env, { discovery: { intervalMs: 60_000, onDemandMs: 0 } })
  const before = Date.now()
  const unknown = await request(`${url}/clusters/gpu-a/x`)
  t.equal(unknown.statusCode, 404, 'answered once the read is cut off')
  await unknown.body.dump()
  t.ok(Date.now() - before < 5000)
  list = [{ uuid: UUID.a, name: 'gpu-a', domain: cluster.url, status: { state: 'Connected' } }]
  const found = await request(`${url}/clusters/gpu-a/x`)
  t.equal(found.statusCode, 200, 'the list is read again, and the cluster served')
  await found.body.dump()
})

t.test('durations that go into timers are bounded: TIMEOUT, LOGIN_TIMEOUT and REFRESH_SKEW of 2^31 ms or more are refused at start', async (t) => {
  for (const name of ['TIMEOUT', 'LOGIN_TIMEOUT', 'REFRESH_SKEW']) {
    const result = await runCli(['check'], { ...runaiEnv({ url: 'http://127.0.0.1:1' } as Emulator), [`BEARER_PROXY_${name}`]: '2147484' })
    t.equal(result.code, 2, name)
    t.match(result.stderr, new RegExp(`BEARER_PROXY_${name}: must be <= 86400`))
  }
})

t.test('a control plane listing 20,000 clusters: the unknown_cluster answer, /-/ready and the log name a few and count the rest', async (t) => {
  const runai = await startRunai(t)
  runai.clusters = Array.from({ length: 20_000 }, (_, i) => ({ uuid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`, name: `gpu-${i}`, domain: `${runai.url}/c${i}`, status: { state: 'Connected' } }))
  const { url, proxy, logs } = await startTestProxy(t, env(runai, { BEARER_PROXY_LOG_LEVEL: 'info' }))
  await bounded(once(proxy.discovery as NonNullable<typeof proxy.discovery>, 'change'), 20_000, 'the first list')
  const unknown = await request(`${url}/clusters/nope/x`)
  t.equal(unknown.statusCode, 404)
  const body = await unknown.body.text()
  t.ok(body.length < 2000, `unknown_cluster is ${body.length} bytes`)
  t.match(JSON.parse(body), { error: 'unknown_cluster', message: /known: gpu-0, gpu-1, .*gpu-19 and 19980 more\)$/ })
  const ready = await request(`${url}/-/ready`)
  const text = await ready.body.text()
  t.ok(text.length < 4000, `/-/ready is ${text.length} bytes`)
  t.match(JSON.parse(text), { ready: true, moreRoutes: 19_901 })
  t.equal((JSON.parse(text) as { routes: string[] }).routes.length, 100)
  const line = logs.lines.find((entry) => entry.includes('"clusters_discovered"')) ?? ''
  t.ok(line.length < 8000, `the clusters_discovered line is ${line.length} bytes`)
  t.match(JSON.parse(line), { count: 20_000, msg: /^clusters served \(20000\): gpu-0, .* and 19980 more$/ })
  t.equal((await request(`${url}/clusters/gpu-19999/x`)).statusCode, 200, 'every cluster is still served')
})
