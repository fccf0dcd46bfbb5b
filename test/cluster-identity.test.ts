import { once } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { WebSocketServer } from 'ws'
import { loadConfig } from '../src/config.js'
import { createLogger } from '../src/log.js'
import { startProxy } from '../src/server.js'
import { type Emulator, RUNAI, runaiEnv, startRunai } from './helpers/emulators.js'
import { bounded, LogCapture, rawHttp, startTestProxy, type Teardown, wsRoundTrip } from './helpers/stack.js'

/**
 * A route's token reaches its own upstream only, and a cluster obeys the same path
 * rules under every name: told by a cluster that records which token reached it.
 */

const UUID = {
  a: '0b9f7a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b',
  b: '1c0a8b5f-2d3e-4f60-9b0c-1d2e3f4a5b6c'
}
const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-identity-'))

interface Cluster {
  readonly url: string
  /** The bearer token of every request and WebSocket upgrade that reached it, with its path. */
  readonly seen: Array<{ path: string, token: string, websocket: boolean }>
}

/** A Run:ai cluster's API that takes any token and records it; WebSocket upgrades are echoed. */
async function startCluster (t: Teardown): Promise<Cluster> {
  const cluster = { url: '', seen: [] as Cluster['seen'] }
  const tokenOf = (authorization: string | undefined): string => /^Bearer (.+)$/.exec(authorization ?? '')?.[1] ?? ''
  const server = createServer((req, res) => {
    cluster.seen.push({ path: req.url ?? '', token: tokenOf(req.headers.authorization), websocket: false })
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ path: req.url }))
  })
  const sockets = new WebSocketServer({ server })
  sockets.on('connection', (socket, req) => {
    cluster.seen.push({ path: req.url ?? '', token: tokenOf(req.headers.authorization), websocket: true })
    socket.on('message', (message) => socket.send(`echo ${String(message)}`))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { sockets.close(); server.closeAllConnections(); server.close() })
  cluster.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return cluster
}

/** Who a token was issued to, by the emulator that issued it. */
const issuedBy = (token: string, ...emulators: Array<[string, Emulator]>): string =>
  emulators.find(([, emulator]) => emulator.issued.includes(token))?.[0] ?? 'nobody'

async function get (base: string, path: string): Promise<number> {
  const answer = await request(`${base}${path}`)
  await answer.body.dump()
  return answer.statusCode
}

t.test('two credential sets discovering one control plane\'s clusters: each route\'s requests carry its own set\'s token, HTTP and WebSocket, across a reload', async (t) => {
  const cluster = await startCluster(t)
  const runai = await startRunai(t)
  runai.clusters = [{ uuid: UUID.a, name: 'gpu-a', domain: `${cluster.url}/a`, status: { state: 'Connected' } }]
  // admin: the access key (tokens for runai-app); user: a person's password (tokens for the researcher).
  const file = join(dir, 'two-sets.yaml')
  const yaml = (adminSet: string, userSet: string): string => `port: 0
credentials:
  admin: { auth: runai, upstream: "${runai.url}", clientId: ${RUNAI.client.id}, clientSecret: ${RUNAI.client.secret} }
  user: { auth: runai, upstream: "${runai.url}", grant: password, username: "${RUNAI.user.username}", password: ${RUNAI.user.password} }
routes:
  - { prefix: /admin, credentials: ${adminSet} }
  - { prefix: /user, credentials: ${userSet} }
`
  writeFileSync(file, yaml('admin', 'user'))
  const proxy = await startProxy(loadConfig({ configFile: file, env: {} }), createLogger('silent', new LogCapture()), { discovery: { intervalMs: 60_000, onDemandMs: 0 } })
  t.teardown(() => proxy.close())
  const subjectOf = (token: string): string => JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')).sub as string
  const lastSubject = (): string => subjectOf(cluster.seen.at(-1)?.token ?? '')

  // The user route is looked up last (shorter root): before the fix its requests took the admin's token.
  for (const [path, subject] of [
    ['/user/clusters/gpu-a/api/v1/jobs', RUNAI.user.username],
    [`/user/clusters/${UUID.a}/api/v1/jobs`, RUNAI.user.username],
    ['/admin/clusters/gpu-a/api/v1/jobs', RUNAI.client.id],
    [`/admin/clusters/${UUID.a}/x`, RUNAI.client.id],
    ['/user/clusters/gpu-a/again', RUNAI.user.username]
  ] as const) {
    t.equal(await get(proxy.address, path), 200, path)
    t.equal(lastSubject(), subject, `${path} carried ${subject}'s token`)
  }
  const ws = proxy.address.replace(/^http/, 'ws')
  t.equal(await wsRoundTrip(`${ws}/user/clusters/gpu-a/api/v1/ws`, 'hi'), 'echo hi')
  t.same([cluster.seen.at(-1)?.websocket, lastSubject()], [true, RUNAI.user.username], 'a WebSocket upgrade carries its route\'s token')
  t.equal(await wsRoundTrip(`${ws}/admin/clusters/gpu-a/api/v1/ws`, 'hi'), 'echo hi')
  t.equal(lastSubject(), RUNAI.client.id)

  // Reloaded with the sets swapped: each route now carries the other set's token.
  writeFileSync(file, yaml('user', 'admin'))
  await proxy.reconfigure(loadConfig({ configFile: file, env: {} }))
  t.equal(await get(proxy.address, '/user/clusters/gpu-a/after'), 200)
  t.equal(lastSubject(), RUNAI.client.id, 'after the reload, /user carries the admin set\'s token')
  t.equal(await get(proxy.address, '/admin/clusters/gpu-a/after'), 200)
  t.equal(lastSubject(), RUNAI.user.username)
  t.equal(await wsRoundTrip(`${ws}/admin/clusters/gpu-a/ws`, 'hi'), 'echo hi')
  t.equal(lastSubject(), RUNAI.user.username)
})

t.test('two control planes listing one cluster domain, discovered and configured: each route\'s requests carry its own control plane\'s token', async (t) => {
  const cluster = await startCluster(t)
  const [east, west] = [await startRunai(t), await startRunai(t)]
  for (const runai of [east, west]) runai.clusters = [{ uuid: UUID.a, name: 'gpu', domain: `${cluster.url}/shared`, status: { state: 'Connected' } }]
  const file = join(dir, 'two-planes.yaml')
  writeFileSync(file, `port: 0
credentials:
  east: { auth: runai, upstream: "${east.url}", clientId: ${RUNAI.client.id}, clientSecret: ${RUNAI.client.secret} }
  west: { auth: runai, upstream: "${west.url}", clientId: ${RUNAI.client.id}, clientSecret: ${RUNAI.client.secret} }
routes:
  - { prefix: /e, credentials: east }
  - { prefix: /west, credentials: west }
  - { prefix: /e-listed, credentials: east, clusters: { gpu: "${cluster.url}/shared" } }
  - { prefix: /w-listed, credentials: west, clusters: { gpu: "${cluster.url}/shared" } }
`)
  const proxy = await startProxy(loadConfig({ configFile: file, env: {} }), createLogger('silent', new LogCapture()), { discovery: { intervalMs: 60_000, onDemandMs: 0 } })
  t.teardown(() => proxy.close())
  for (const [path, plane] of [
    ['/e/clusters/gpu/x', 'east'], ['/west/clusters/gpu/x', 'west'], [`/e/clusters/${UUID.a}/y`, 'east'],
    ['/e-listed/clusters/gpu/x', 'east'], ['/w-listed/clusters/gpu/x', 'west'], ['/e/clusters/gpu/z', 'east']
  ] as const) {
    t.equal(await get(proxy.address, path), 200, path)
    t.equal(issuedBy(cluster.seen.at(-1)?.token ?? '', ['east', east], ['west', west]), plane, `${path} carried ${plane}'s token`)
  }
  const ws = proxy.address.replace(/^http/, 'ws')
  for (const [path, plane] of [['/e/clusters/gpu/ws', 'east'], ['/west/clusters/gpu/ws', 'west'], ['/w-listed/clusters/gpu/ws', 'west']] as const) {
    t.equal(await wsRoundTrip(`${ws}${path}`, 'hi'), 'echo hi')
    t.equal(issuedBy(cluster.seen.at(-1)?.token ?? '', ['east', east], ['west', west]), plane, `${path} (WebSocket) carried ${plane}'s token`)
  }
})

/** A control plane listing gpu-a and gpu-b, each served by name and by uuid, behind a proxy with `extra` settings. */
async function behindRules (t: Teardown & { teardown: (fn: () => unknown) => void }, extra: Record<string, string>, clusters?: (cluster: Cluster) => unknown[]): Promise<{ url: string, cluster: Cluster, runai: Emulator }> {
  const cluster = await startCluster(t)
  const runai = await startRunai(t)
  runai.clusters = clusters?.(cluster) ?? [
    { uuid: UUID.a, name: 'gpu-a', domain: `${cluster.url}/a`, status: { state: 'Connected' } },
    { uuid: UUID.b, name: 'gpu-b', domain: `${cluster.url}/b`, status: { state: 'Connected' } }
  ]
  const { url, proxy } = await startTestProxy(t, runaiEnv(runai, { BEARER_PROXY_LOG_LEVEL: 'silent', ...extra }), { discovery: { intervalMs: 60_000, onDemandMs: 0 } })
  await bounded(once(proxy.discovery as NonNullable<typeof proxy.discovery>, 'change'), 5000, 'the first list')
  return { url, cluster, runai }
}

/** Every name of cluster a (its name in two cases, its uuid in two cases), with the rest of a path. */
const namesOfA = ['gpu-a', 'GPU-A', 'Gpu-A', UUID.a, UUID.a.toUpperCase()]

t.test('DENY_PATHS naming a cluster refuses it under every name: uuid, any case, HTTP and WebSocket; the others are served', async (t) => {
  const { url, cluster } = await behindRules(t, { BEARER_PROXY_DENY_PATHS: '/clusters/gpu-a' })
  for (const name of namesOfA) {
    t.equal(await get(url, `/clusters/${name}/api/v1/jobs`), 403, `/clusters/${name}/…`)
    t.equal(await get(url, `/clusters/${name}`), 403, `/clusters/${name}`)
    const upgrade = await rawHttp(url, `GET /clusters/${name}/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`)
    t.match(upgrade, /^HTTP\/1\.1 403 /, `upgrade to /clusters/${name}`)
  }
  t.equal(cluster.seen.filter((seen) => seen.path.startsWith('/a')).length, 0, 'nothing reached cluster a')
  for (const name of ['gpu-b', 'GPU-B', UUID.b, UUID.b.toUpperCase()]) {
    t.equal(await get(url, `/clusters/${name}/api/v1/jobs`), 200, `/clusters/${name}/… is served`)
    t.equal(cluster.seen.at(-1)?.path, '/b/api/v1/jobs')
  }
})

t.test('ALLOW_PATHS naming one cluster admits it under every name and no other cluster, even one whose uuid is its name in another case', async (t) => {
  const { url, cluster } = await behindRules(t, { BEARER_PROXY_ALLOW_PATHS: '/clusters/gpu-a/api' })
  for (const name of namesOfA) {
    t.equal(await get(url, `/clusters/${name}/api/v1/jobs`), 200, `/clusters/${name}/api/… is allowed`)
    t.equal(cluster.seen.at(-1)?.path, '/a/api/v1/jobs')
  }
  for (const name of ['gpu-b', UUID.b]) t.equal(await get(url, `/clusters/${name}/api/v1/jobs`), 403, `/clusters/${name}/… is not`)

  // A cluster named like a uuid, and another cluster whose uuid is that name in lower case:
  // the name is served first, and the second, which any rule would confuse with it, is not served at all.
  const shaped = '3F2504E0-4F89-41D3-9A0C-0305E82C3301'
  const first = await behindRules(t, { BEARER_PROXY_ALLOW_PATHS: `/clusters/${shaped}` }, (cluster) => [
    { uuid: UUID.a, name: shaped, domain: `${cluster.url}/named`, status: { state: 'Connected' } },
    { uuid: shaped.toLowerCase(), name: 'other', domain: `${cluster.url}/other`, status: { state: 'Connected' } }
  ])
  t.equal(await get(first.url, `/clusters/${shaped.toLowerCase()}/x`), 200)
  t.equal(first.cluster.seen.at(-1)?.path, '/named/x', 'the lower-case spelling is the named cluster, not the other\'s uuid')
  t.equal(await get(first.url, '/clusters/other/x'), 403)
  // The other order: the uuid is served first; the name that would stand for it is skipped, and the rule does not reach the uuid's cluster.
  const second = await behindRules(t, { BEARER_PROXY_ALLOW_PATHS: `/clusters/${shaped}` }, (cluster) => [
    { uuid: shaped.toLowerCase(), name: 'other', domain: `${cluster.url}/other`, status: { state: 'Connected' } },
    { uuid: UUID.a, name: shaped, domain: `${cluster.url}/named`, status: { state: 'Connected' } }
  ])
  for (const name of [shaped, shaped.toLowerCase(), 'other']) t.equal(await get(second.url, `/clusters/${name}/x`), 403, `/clusters/${name} is the other cluster's, not allowed`)
  t.equal(second.cluster.seen.length, 0, 'nothing reached either cluster')
})

t.test('a route\'s own denyPaths, and a cluster the control plane lists only after the request came, are judged on the cluster\'s name', async (t) => {
  const cluster = await startCluster(t)
  const runai = await startRunai(t)
  runai.clusters = []
  const file = join(dir, 'route-rules.yaml')
  writeFileSync(file, `port: 0
denyPaths: /clusters/late
credentials:
  main: { auth: runai, upstream: "${runai.url}", clientId: ${RUNAI.client.id}, clientSecret: ${RUNAI.client.secret} }
routes:
  - { prefix: /r, credentials: main, denyPaths: /clusters/gpu-a }
`)
  const proxy = await startProxy(loadConfig({ configFile: file, env: {} }), createLogger('silent', new LogCapture()), { discovery: { intervalMs: 60_000, onDemandMs: 0 } })
  t.teardown(() => proxy.close())
  t.equal(await get(proxy.address, '/r/clusters/gpu-b/x'), 404, 'no cluster yet')
  // Listed from now on: the request that names it by uuid reads the list again, and is judged on its name.
  runai.clusters = [
    { uuid: UUID.a, name: 'gpu-a', domain: `${cluster.url}/a`, status: { state: 'Connected' } },
    { uuid: UUID.b, name: 'gpu-b', domain: `${cluster.url}/b`, status: { state: 'Connected' } }
  ]
  t.equal(await get(proxy.address, `/r/clusters/${UUID.a.toUpperCase()}/x`), 403, 'found by the refresh, then refused by the route\'s rule')
  for (const name of namesOfA) t.equal(await get(proxy.address, `/r/clusters/${name}/x`), 403, `/r/clusters/${name}`)
  t.equal(await get(proxy.address, `/r/clusters/${UUID.b}/x`), 200)
  t.equal(cluster.seen.length, 1, 'only gpu-b was reached')
  // A top-level rule names a route's cluster by its whole path: /clusters/late is not /r/clusters/late.
  runai.clusters = [...runai.clusters, { uuid: '2d1b9c60-3e4f-4071-8c1d-2e3f4a5b6c7d', name: 'late', domain: `${cluster.url}/late`, status: { state: 'Connected' } }]
  t.equal(await get(proxy.address, '/r/clusters/2D1B9C60-3E4F-4071-8C1D-2E3F4A5B6C7D/x'), 200, 'the top level\'s /clusters/late is not the route\'s /r/clusters/late')
})
