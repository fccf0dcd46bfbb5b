import { once } from 'node:events'
import t from 'tap'
import { request } from 'undici'
import { afterFetch, baseEnv, collect, spawnCli, startApiOf, startIdentity, startTestProxy, waitForLine } from './helpers/stack.js'
import { endTree } from './helpers/processes.js'
import { startTokenEndpoint } from './helpers/token-endpoint.js'

t.test('JSON off a terminal: one listening line (not Fastify\'s too), one ready line once the first token is held', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const child = spawnCli(['serve'], { ...baseEnv(idp, api), BEARER_PROXY_ADMIN_ADDRESS: '127.0.0.1:0' })
  const output = collect(child)
  t.teardown(() => { child.kill('SIGKILL') })
  const ready = JSON.parse(await waitForLine(child, /"event":"ready"/)) as { msg: string, address: string }
  t.match(ready.msg, new RegExp(`^ready: the first token is held; forwarding / -> ${api.url}/$`))
  child.kill('SIGTERM')
  await once(child, 'exit')
  const lines = output().stdout.trim().split('\n').map((line) => JSON.parse(line) as { msg: string, event?: string })
  t.equal(lines.filter((line) => /listening/i.test(line.msg)).length, 1, 'one listening line for both listeners')
  t.match(lines.find((line) => line.event === 'listening'), { msg: /^listening on http:\/\/127\.0\.0\.1:\d+ \(probes and metrics on http:\/\/127\.0\.0\.1:\d+\)$/ })
  t.equal(lines.filter((line) => line.event === 'ready').length, 1)
})

t.test('LOG_FORMAT=pretty (the default on a terminal): one readable line per entry; json forces JSON', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const child = spawnCli(['serve'], { ...baseEnv(idp, api), BEARER_PROXY_LOG_FORMAT: 'pretty' })
  t.teardown(() => { child.kill('SIGKILL') })
  const listening = await waitForLine(child, /listening on/)
  t.match(listening, /^(\x1b\[[\d;]*m)?\[\d\d:\d\d:\d\d\.\d{3}\] INFO(\x1b\[[\d;]*m)?: listening on http:\/\/127\.0\.0\.1:\d+ /)
  const address = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(listening)?.[1] as string
  t.match(await waitForLine(child, /ready: the first token is held/), /INFO.*: ready: the first token is held/)
  await (await request(`${address}/x`)).body.dump()
  t.match(await waitForLine(child, /"path":"\/x"/), /INFO.*: request \{.*"status":200/, 'a request is one line')

  const json = spawnCli(['serve'], { ...baseEnv(idp, api), BEARER_PROXY_LOG_FORMAT: 'json' })
  t.teardown(() => { json.kill('SIGKILL') })
  t.match(JSON.parse(await waitForLine(json, /listening on/)), { level: 30, event: 'listening' })
})

t.test('debug logs each forwarding decision: route, upstream origin, path without the query, token age', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const { url, logs } = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_LOG_LEVEL: 'debug', BEARER_PROXY_CLUSTERS: `gpu-a=${api.url}/a` })
  await (await request(`${url}/clusters/gpu-a/jobs?owner=alice&secret=q`)).body.dump()
  const [forward] = logs.events('forward')
  t.match(forward, { level: 20, route: 'gpu-a', upstream: api.url, path: '/a/jobs', attempt: 1, msg: 'forwarding' })
  t.type(forward?.obtainedSecondsAgo, 'number', 'the token\'s age')
  t.notOk(logs.text.includes('owner=alice'), 'the query is never logged')

  const quiet = await startTestProxy(t, baseEnv(idp, api))
  await (await request(`${quiet.url}/y`)).body.dump()
  t.equal(quiet.logs.events('forward').length, 0, 'not at info')
})

t.test('probes and metric scrapes log at debug, not at info', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const info = await startTestProxy(t, baseEnv(idp, api))
  const debug = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_LOG_LEVEL: 'debug' })
  for (const proxy of [info, debug]) {
    await afterFetch(proxy.proxy.tokens, () => proxy.proxy.tokens.status().ready)
    for (const path of ['/-/healthy', '/-/ready', '/-/metrics', '/api']) await (await request(`${proxy.url}${path}`)).body.dump()
  }
  const paths = (proxy: typeof info, level: number): string[] => proxy.logs.lines
    .map((line) => JSON.parse(line) as { msg: string, level: number, path: string })
    .filter((line) => line.msg === 'request' && line.level === level).map((line) => line.path)
  t.same(paths(info, 30), ['/api'], 'at info: the forwarded request only')
  t.same(paths(debug, 20), ['/-/healthy', '/-/ready', '/-/metrics'], 'at debug: the probes and the scrape too')
})

t.test('a 502, 503 or 504 the proxy answers is one warning line with the reason, no stack trace', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  api.routes.set('/slow', () => {})
  const proxy = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_TIMEOUT: '0.3', BEARER_PROXY_CLUSTERS: 'gone=http://127.0.0.1:1' })
  for (const [path, status] of [['/clusters/gone/x', 502], ['/slow', 504]] as const) {
    const answer = await request(`${proxy.url}${path}`)
    t.equal(answer.statusCode, status)
    await answer.body.dump()
  }
  const warnings = proxy.logs.lines.map((line) => JSON.parse(line) as Record<string, unknown>).filter((line) => line.level === 40)
  t.match(warnings, [
    { event: 'upstream_unreachable', upstream: 'gone', status: 502, msg: 'upstream gone (http://127.0.0.1:1) refused the connection' },
    { event: 'upstream_timeout', upstream: 'admin', status: 504, msg: /sent no response headers within 0.3 s/ }
  ])
  t.equal(warnings.length, 2)
  t.notMatch(proxy.logs.text, /"stack"|\\n\s+at /, 'no stack trace')
  t.notMatch(proxy.logs.text, /"level":50/, 'not logged as an error too')

  const down = await startTokenEndpoint(t, () => ({ status: 500, body: { error: 'server_error' } }))
  const unready = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_TOKEN_URL: `${down.url}/token` }, { backoffMs: 60_000 })
  await afterFetch(unready.proxy.tokens, () => unready.logs.events('token_failed').length > 0)
  const answer = await request(`${unready.url}/x`)
  t.equal(answer.statusCode, 503)
  await answer.body.dump()
  t.match(unready.logs.events('token_unavailable'), [{ level: 40, upstream: 'admin', status: 503, msg: /answered 500 server_error/ }])
  t.notMatch(unready.logs.text, /"stack"/)
})

t.test('on a terminal the default is the readable format, coloured (run under a pseudo-terminal by script(1))', async (t) => {
  const { spawn, spawnSync } = await import('node:child_process')
  const { CLI } = await import('./helpers/stack.js')
  if (spawnSync('script', ['--version']).status !== 0) {
    t.comment('script(1) from util-linux is not installed: skipped')
    return
  }
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => key !== 'NODE_OPTIONS' && !key.startsWith('BEARER_PROXY_')))
  const child = spawn('script', ['-qec', `${CLI} serve`, '/dev/null'], { env: { ...env, ...baseEnv(idp, api) }, stdio: ['pipe', 'pipe', 'pipe'], detached: true })
  // script(1) starts serve in a session of its own, on the pseudo-terminal: ending script's group
  // would leave it running (a hang-up is a reload to serve). serve is ended itself, and awaited.
  t.teardown(async () => { await endTree(child.pid as number) })
  const line = await waitForLine(child, /ready: the first token is held/)
  t.match(line, /\x1b\[\d+mINFO\x1b\[\d+m/, 'a coloured level')
  t.notMatch(line, /^\{/, 'not JSON')
})
