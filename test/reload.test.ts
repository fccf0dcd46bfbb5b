import { mkdtempSync, renameSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { loadConfig } from '../src/config.js'
import { createLogger } from '../src/log.js'
import { startProxy } from '../src/server.js'
import type { TokenManager } from '../src/token/manager.js'
import { afterFetch, bounded, CLIENT, collect, LogCapture, rawHttp, spawnCli, startApiOf, startIdentity, waitForLine, wsRoundTrip } from './helpers/stack.js'
import { startTokenEndpoint } from './helpers/token-endpoint.js'
import { startEcho } from './helpers/upstream.js'

interface Changes { added: string[], changed: string[], removed: string[] }

/**
 * Clients calling `paths` in turn (one per worker) until stopped, counting the answers
 * by path and status; `answered(n)` resolves once `n` more have come back,
 * `answered(n, '/path 200')` once `n` more of that path and status have.
 */
function startLoad (address: string, paths: readonly string[]): { answers: Map<string, number>, answered: (count: number, key?: string) => Promise<void>, stop: () => Promise<void> } {
  let running = true
  let goal = { key: '', at: Infinity, reached: () => {} }
  let total = 0
  const answers = new Map<string, number>()
  const count = (key: string): number => key === '' ? total : answers.get(key) ?? 0
  const workers = Promise.all(paths.map(async (path) => {
    while (running) {
      const answer = await request(`${address}${path}`)
      await answer.body.dump()
      const key = `${path} ${answer.statusCode}`
      answers.set(key, (answers.get(key) ?? 0) + 1)
      total++
      if (count(goal.key) === goal.at) goal.reached()
    }
  }))
  return {
    answers,
    answered: async (more, key = '') => { await new Promise<void>((resolve) => { goal = { key, at: count(key) + more, reached: resolve } }) },
    stop: async () => {
      running = false
      await workers
    }
  }
}
interface Reloaded { cause: string, sets: Changes, routes: Changes, settings: string[], needsRestart: string[], msg: string }

const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-reload-'))
/** Written to a temporary name and renamed over, as editors and Kubernetes do. */
const write = (name: string, text: string): string => {
  writeFileSync(join(dir, `.${name}.tmp`), text)
  renameSync(join(dir, `.${name}.tmp`), join(dir, name))
  return join(dir, name)
}

t.test('reload: a changed credential set gets new tokens, an unchanged one keeps its own, a bad file is refused, under load nothing fails', async (t) => {
  const north = await startIdentity(t, {
    accessTokenTtl: 600,
    clients: [CLIENT, { clientId: 'north-second', clientSecret: 'north-Second-5520' }]
  })
  // South: a token endpoint that accepts either of its client's two secrets (a rotation), and an API that echoes the token.
  const secrets = new Set(['south-Secret-8841', 'south-Rotated-9952'])
  let issued = 0
  const south = await startTokenEndpoint(t, (call) => secrets.has(String(call.fields.client_secret))
    ? { body: { access_token: `south-token-${++issued}`, token_type: 'Bearer', expires_in: 600 } }
    : { status: 401, body: { error: 'invalid_client' } })
  const northApi = await startApiOf(t, north)
  const southApi = await startEcho(t)
  write('south-secret', 'south-Secret-8841\n')
  const yaml = (northClient: string, northSecret: string, extra = ''): string => `port: 0
credentials:
  north:
    tokenUrl: ${north.tokenUrl}
    clientId: ${northClient}
    clientSecret: ${northSecret}
  south:
    tokenUrl: ${south.url}/token
    clientId: south-client
    clientSecretFile: ${join(dir, 'south-secret')}
routes:
  - { prefix: /north, upstream: "${northApi.url}", credentials: north }
  - { prefix: /south, upstream: "${southApi.url}", credentials: south }
${extra}`
  const file = write('proxy.yaml', yaml(CLIENT.clientId, CLIENT.clientSecret))
  const child = spawnCli(['serve', '--config', file], {})
  const output = collect(child)
  t.teardown(() => { child.kill('SIGKILL') })
  const address = (JSON.parse(await waitForLine(child, /"event":"listening"/)) as { address: string }).address
  await waitForLine(child, /"event":"ready"/)

  // Load on both routes for the whole test.
  const load = startLoad(address, ['/north/x', '/south/y', '/north/x', '/south/y'])
  await bounded(load.answered(20), 10_000, '20 requests before the first reload')

  // SIGHUP after north's client changed: north's token is replaced, south's kept.
  write('proxy.yaml', yaml('north-second', 'north-Second-5520'))
  child.kill('SIGHUP')
  // The watcher sees the file change too: the reload that found north changed is the one to read.
  const reloaded = JSON.parse(await waitForLine(child, /"event":"reloaded".*"changed":\["north"\]/)) as Reloaded
  t.same(reloaded.sets, { added: [], changed: ['north'], removed: [] })
  t.same(reloaded.routes, { added: [], changed: [], removed: [] })
  t.same(reloaded.needsRestart, [])
  t.match(reloaded.msg, /reloaded \(.*\): credential sets changed: north$/)
  const seenBefore = northApi.seen.length
  const afterReload = await request(`${address}/north/after`)
  t.equal(afterReload.statusCode, 200)
  await afterReload.body.dump()
  t.equal(northApi.seen.at(-1)?.sub, 'north-second', 'north\'s new credentials are used at once')
  t.ok(northApi.seen.slice(seenBefore).every((seen) => seen.sub === 'north-second' || seen.url !== '/north/after'))

  // A bad file: its problems are logged, the running configuration keeps serving.
  write('proxy.yaml', yaml('north-second', 'north-Second-5520', 'portt: 1\n'))
  child.kill('SIGHUP')
  t.match(await waitForLine(child, /"event":"reload_refused"/), /portt: unknown setting; did you mean port\?/)
  // A YAML error on a line holding a secret: the parser's message would quote it; the proxy's never does.
  write('proxy.yaml', yaml('north-second', 'north-Second-5520', 'clientSecret: |Leaked-Yaml-Value-77\n'))
  child.kill('SIGHUP')
  const refused = await waitForLine(child, /"event":"reload_refused".*after \| or >/)
  t.notMatch(refused, /Leaked-Yaml-Value-77/, 'the reload_refused line quotes none of the file')

  // Without a signal: south's secret file rotated (renamed over, as a Kubernetes Secret is) is noticed, south gets a new token.
  t.equal(await (await request(`${address}/south/before`)).body.text(), 'Bearer south-token-1')
  write('proxy.yaml', yaml('north-second', 'north-Second-5520'))
  write('south-secret', 'south-Rotated-9952\n')
  const watched = JSON.parse(await waitForLine(child, /"event":"reloaded".*"changed":\["south"\]/, 15_000)) as Reloaded
  t.same(watched.sets.changed, ['south'])
  t.match(watched.cause, /changed/)
  t.equal(await (await request(`${address}/south/after`)).body.text(), 'Bearer south-token-2', 'the old token is not used again')
  t.equal(south.calls.at(-1)?.fields.client_secret, 'south-Rotated-9952')

  await bounded(load.answered(20), 10_000, '20 requests after the last reload')
  await load.stop()
  const failed = [...load.answers].filter(([key]) => !key.endsWith(' 200'))
  t.same(failed, [], `no request failed (${JSON.stringify(Object.fromEntries(load.answers))})`)
  t.equal(south.calls.length, 2, 'south asked for a token at start and after its secret changed, not when north changed')
  t.notMatch(output().stdout, /north-Second-5520|south-Secret-8841|south-Rotated-9952|south-token-/, 'no secret or token in the log')
})

t.test('reload: ./.env changed: a new upstream and READ_ONLY apply at once; a change that takes a restart is named', async (t) => {
  const north = await startIdentity(t, { accessTokenTtl: 600 })
  const api = await startApiOf(t, north)
  // ./.env of the directory it runs in, read without --env-file, is watched too.
  write('.env', `BEARER_PROXY_TOKEN_URL=${north.tokenUrl}\nBEARER_PROXY_CLIENT_ID=${CLIENT.clientId}\nBEARER_PROXY_CLIENT_SECRET=${CLIENT.clientSecret}\nBEARER_PROXY_UPSTREAM=${api.url}\nBEARER_PROXY_PORT=0\n`)
  const child = spawnCli(['serve'], {}, dir)
  t.teardown(() => { child.kill('SIGKILL') })
  const address = (JSON.parse(await waitForLine(child, /"event":"listening"/)) as { address: string }).address
  await waitForLine(child, /"event":"ready"/)
  const posted = await request(`${address}/things`, { method: 'POST', body: 'x' })
  await posted.body.dump()
  t.equal(posted.statusCode, 200)
  t.equal(api.seen.at(-1)?.url, '/things')
  write('.env', `BEARER_PROXY_TOKEN_URL=${north.tokenUrl}\nBEARER_PROXY_CLIENT_ID=${CLIENT.clientId}\nBEARER_PROXY_CLIENT_SECRET=${CLIENT.clientSecret}\nBEARER_PROXY_UPSTREAM=${api.url}/v2\nBEARER_PROXY_PORT=0\nBEARER_PROXY_READ_ONLY=true\nBEARER_PROXY_LOG_LEVEL=debug\n`)
  const line = JSON.parse(await waitForLine(child, /"event":"reloaded"/, 15_000)) as Reloaded
  t.same(line.sets, { added: [], changed: [], removed: [] }, 'the credentials did not change: the token is kept')
  t.same(line.routes, { added: [], changed: ['admin'], removed: [] })
  t.same(line.settings, ['readOnly'])
  t.same(line.needsRestart, ['logLevel'])
  t.match(line.msg, /routes changed: admin; settings changed: readOnly; logLevel changed too, which takes a restart/)
  const refused = await request(`${address}/things`, { method: 'POST', body: 'x' })
  t.equal(refused.statusCode, 403, 'READ_ONLY applies at once')
  t.match(await refused.body.text(), /READ_ONLY is on/)
  const read = await request(`${address}/things`)
  t.equal(read.statusCode, 200, await read.body.text())
  t.equal(api.seen.at(-1)?.url, '/v2/things', 'the new upstream path is used at once')
})

t.test('reload of routes and sets under load: a route added, one moved, one removed with its set; in-flight requests finish where they started', async (t) => {
  const north = await startIdentity(t, { accessTokenTtl: 600 })
  const east = await startIdentity(t, { accessTokenTtl: 600 })
  let issued = 0
  const south = await startTokenEndpoint(t, () => ({ body: { access_token: `south-token-${++issued}`, token_type: 'Bearer', expires_in: 600 } }))
  // Each API accepts only its own issuer's tokens.
  const [northApi, northApi2, eastApi] = [await startApiOf(t, north), await startApiOf(t, north), await startApiOf(t, east)]
  const southApi = await startEcho(t)
  // A request held by the API it was routed to, until released.
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  let arrived: () => void = () => {}
  const holding = new Promise<void>((resolve) => { arrived = resolve })
  northApi.routes.set('/hold', (_req, res) => {
    arrived()
    void held.then(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('answered by the old route'))
  })
  const set = (name: string, idp: { tokenUrl: string }): string => `  ${name}: { tokenUrl: "${idp.tokenUrl}", clientId: ${CLIENT.clientId}, clientSecret: ${CLIENT.clientSecret} }\n`
  const before = write('routes.yaml', `port: 0
credentials:
${set('north', north)}  south: { tokenUrl: "${south.url}/token", allowHttpTokenEndpoint: true, clientId: south-client, clientSecret: south-Secret-3310 }
routes:
  - { prefix: /north, upstream: "${northApi.url}", credentials: north }
  - { prefix: /south, upstream: "${southApi.url}", credentials: south }
`)
  const logs = new LogCapture()
  const proxy = await startProxy(loadConfig({ configFile: before, env: {} }), createLogger('info', logs))
  t.teardown(() => proxy.close())
  const southTokens = proxy.setTokens.get('south') as TokenManager
  const northTokens = proxy.setTokens.get('north') as TokenManager
  await Promise.all([afterFetch(northTokens, () => northTokens.status().ready), afterFetch(southTokens, () => southTokens.status().ready)])
  const northToken = northTokens.current()

  // Load on both routes for the whole test: every answer is 200, or 404 for /south once it is gone.
  const load = startLoad(proxy.address, ['/north/x', '/north/x', '/south/y', '/north/x', '/north/x', '/south/y'])
  const { answers } = load
  await bounded(load.answered(60), 10_000, '60 requests before the reload')
  const inFlight = request(`${proxy.address}/north/hold`)
  await bounded(holding, 5000, 'the held request to reach the API')
  const southSeen = (): number => southApi.requests()

  // /north moves to another API of the same identity provider, /south and its set go, /east and its set come.
  const after = write('routes.yaml', `port: 0
credentials:
${set('north', north)}${set('east', east)}routes:
  - { prefix: /north, upstream: "${northApi2.url}", credentials: north }
  - { prefix: /east, upstream: "${eastApi.url}", credentials: east }
`)
  const summary = await proxy.reconfigure(loadConfig({ configFile: after, env: {} }))
  t.same(summary.sets, { added: ['east'], changed: [], removed: ['south'] })
  t.same(summary.routes, { added: ['east'], changed: ['north'], removed: ['south'] })
  t.same(summary.needsRestart, [])

  // The held request finishes on the route it started on.
  release()
  const old = await inFlight
  t.equal(old.statusCode, 200)
  t.equal(await old.body.text(), 'answered by the old route')

  const eastTokens = proxy.setTokens.get('east') as TokenManager
  await afterFetch(eastTokens, () => eastTokens.status().ready, 5000, 'east\'s first token')
  const moved = await request(`${proxy.address}/north/z`)
  t.equal(moved.statusCode, 200)
  await moved.body.dump()
  t.ok(northApi2.seen.some((seen) => seen.url === '/z'), '/north now goes to its new upstream')
  t.notOk(northApi.seen.some((seen) => seen.url === '/z'))
  t.equal(northTokens.current(), northToken, 'north\'s settings did not change: its token is kept')
  const added = await request(`${proxy.address}/east/w`)
  t.equal(added.statusCode, 200)
  await added.body.dump()
  t.equal(eastApi.seen.at(-1)?.authorized, true, 'east\'s API accepted east\'s token')
  const gone = await request(`${proxy.address}/south/y`)
  t.equal(gone.statusCode, 404)
  t.match(await gone.body.json(), { error: 'not_found' })

  await bounded(load.answered(40, '/north/x 200'), 10_000, '40 answers from /north after the reload')
  await load.stop()
  // The removed set: closed, its token forgotten, never used again.
  t.equal(southTokens.current(), undefined)
  await t.rejects(southTokens.get(), { code: 'token_unavailable' })
  const southSeenAfter = southSeen()
  for (let i = 0; i < 5; i++) await (await request(`${proxy.address}/south/y`)).body.dump()
  t.equal(southSeen(), southSeenAfter, 'nothing reaches the removed route\'s API')
  t.equal(south.calls.length, 1, 'the removed set asked for no token after its start')
  t.notOk(proxy.setTokens.has('south'))
  const failed = [...answers].filter(([key]) => !/ 200$/.test(key) && key !== '/south/y 404')
  t.same(failed, [], `no request failed (${JSON.stringify(Object.fromEntries(answers))})`)
  t.ok(northApi.seen.some((seen) => seen.url === '/x') && northApi2.seen.some((seen) => seen.url === '/x'), 'the load ran through the reload: on the old upstream, then the new')

  const ready = await request(`${proxy.address}/-/ready`)
  t.equal(ready.statusCode, 200)
  t.match(await ready.body.json(), { ready: true, routes: ['north', 'east'] })
  const metrics = await (await request(`${proxy.address}/-/metrics`)).body.text()
  t.match(metrics, /bearer_proxy_token_ready\{credentials="east"\} 1/)
  t.match(metrics, /bearer_proxy_token_fetches_total\{credentials="east",result="success"\} 1/)
  t.notMatch(metrics, /credentials="south"/, 'the removed set\'s series are gone')
  t.notMatch(logs.lines.join('\n'), /south-Secret-3310|south-token-|cs-7Hq2/, 'no secret or token in the log')
})

t.test('reload: a rotated INBOUND_KEY_FILE applies without a restart; the line names the setting, never the key', async (t) => {
  const north = await startIdentity(t, { accessTokenTtl: 600 })
  const api = await startApiOf(t, north)
  const keyFile = write('inbound-key', 'first-Inbound-Key-6610\n')
  const envFile = write('inbound.env', `BEARER_PROXY_TOKEN_URL=${north.tokenUrl}\nBEARER_PROXY_CLIENT_ID=${CLIENT.clientId}\nBEARER_PROXY_CLIENT_SECRET=${CLIENT.clientSecret}\nBEARER_PROXY_UPSTREAM=${api.url}\nBEARER_PROXY_PORT=0\nBEARER_PROXY_INBOUND_KEY_FILE=${keyFile}\n`)
  const child = spawnCli(['serve', '--env-file', envFile], {})
  const output = collect(child)
  t.teardown(() => { child.kill('SIGKILL') })
  const address = (JSON.parse(await waitForLine(child, /"event":"listening"/)) as { address: string }).address
  await waitForLine(child, /"event":"ready"/)
  const asked = async (key: string): Promise<number> => {
    const answer = await request(`${address}/x`, { headers: { 'proxy-authorization': `Bearer ${key}` } })
    await answer.body.dump()
    return answer.statusCode
  }
  t.equal(await asked('first-Inbound-Key-6610'), 200)
  write('inbound-key', 'second-Inbound-Key-7721\n')
  const line = JSON.parse(await waitForLine(child, /"event":"reloaded"/, 15_000)) as Reloaded
  t.same(line.settings, ['inboundKey'])
  t.match(line.cause, /inbound-key changed/)
  t.equal(await asked('first-Inbound-Key-6610'), 403, 'the old key is refused at once')
  t.equal(await asked('second-Inbound-Key-7721'), 200)
  t.notMatch(output().stdout, /Inbound-Key/, 'neither key is logged')
})

t.test('reload: WebSocket upgrades and the admin listener follow the configuration serving now; a route made readOnly refuses upgrades at once', async (t) => {
  const { WebSocketServer } = await import('ws')
  const { createServer } = await import('node:http')
  const echo = async (name: string): Promise<{ url: string, upgrades: string[] }> => {
    const server = createServer((_req, res) => res.end())
    const upgrades: string[] = []
    const wss = new WebSocketServer({ server, verifyClient: (info, done) => { upgrades.push(`${info.req.url ?? ''} ${info.req.headers.authorization ?? ''}`); done(true) } })
    wss.on('connection', (socket) => socket.on('message', (data) => socket.send(`${name} ${String(data)}`)))
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    t.teardown(() => { wss.close(); server.closeAllConnections(); server.close() })
    return { url: `http://127.0.0.1:${(server.address() as import('node:net').AddressInfo).port}`, upgrades }
  }
  const [first, second] = [await echo('first'), await echo('second')]
  const endpoint = await startTokenEndpoint(t, () => ({ body: { access_token: 'ws-token-1', token_type: 'Bearer', expires_in: 600 } }))
  const yaml = (upstream: string, extra: string): string => `port: 0
adminAddress: 127.0.0.1:0
credentials:
  api: { tokenUrl: "${endpoint.url}/token", allowHttpTokenEndpoint: true, clientId: c, clientSecret: ws-Secret-1 }
routes:
  - { prefix: /ws, upstream: "${upstream}", credentials: api${extra} }
`
  const file = write('ws.yaml', yaml(first.url, ''))
  const proxy = await startProxy(loadConfig({ configFile: file, env: {} }), createLogger('silent', new LogCapture()))
  t.teardown(() => proxy.close())
  const ws = proxy.address.replace('http', 'ws')
  const admin = `http://127.0.0.1:${(proxy.admin?.server.address() as import('node:net').AddressInfo).port}`
  t.equal(await wsRoundTrip(`${ws}/ws/attach`, 'hi'), 'first hi')
  t.same(first.upgrades, ['/attach Bearer ws-token-1'])

  write('ws.yaml', yaml(second.url, ' }\n  - { prefix: /other, upstream: "http://127.0.0.1:9", credentials: api'))
  const summary = await proxy.reconfigure(loadConfig({ configFile: file, env: {} }))
  t.same(summary.routes, { added: ['other'], changed: ['ws'], removed: [] })
  t.equal(await wsRoundTrip(`${ws}/ws/attach`, 'again'), 'second again', 'the upgrade goes to the new upstream')
  t.same(second.upgrades, ['/attach Bearer ws-token-1'])
  t.match(await (await request(`${admin}/-/ready`)).body.json(), { ready: true, routes: ['ws', 'other'] }, 'the admin listener reads the routes serving now')

  write('ws.yaml', yaml(second.url, ', readOnly: true'))
  await proxy.reconfigure(loadConfig({ configFile: file, env: {} }))
  const refused = await rawHttp(proxy.address, 'GET /ws/attach HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
  t.match(refused, /^HTTP\/1\.1 403 /)
  t.match(refused, /WebSocket upgrades are not forwarded: route ws is readOnly/)
  t.equal(second.upgrades.length, 1, 'nothing more reached the API')
})
