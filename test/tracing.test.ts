import { spawn } from 'node:child_process'
import { once } from 'node:events'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { createLogger } from '../src/log.js'
import { startTracing, type Tracing, tracingSettings } from '../src/tracing.js'
import type { Idp } from '../demo/idp.js'
import type { Upstream } from './helpers/upstream.js'
import { CLIENT as CLIENT_KIND, type Collector, type ReceivedSpan, SERVER, spanOf, startCollector } from './helpers/otlp.js'
import { moduleRecorder } from './helpers/loads.js'
import { endTree } from './helpers/processes.js'
import { fragments, spellings, assertNoSecret } from './helpers/secrets.js'
import { runaiEnv, startRunai } from './helpers/emulators.js'
import { afterFetch, baseEnv, bounded, CLI, CLIENT, cleanDirectory, collect, LogCapture, runCli, startApiOf, startIdentity, startTestProxy, wsRoundTrip, waitForLine } from './helpers/stack.js'

const CLIENT_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
const CLIENT_SPAN = '00f067aa0ba902b7'
const TRACEPARENT = `00-${CLIENT_TRACE}-${CLIENT_SPAN}-01`

/** A tracer exporting to `collector` quickly, as `serve` makes it from these variables; closed with the test. */
async function tracerFor (t: Test, collector: Collector, env: Record<string, string> = {}): Promise<{ tracing: Tracing, logs: LogCapture }> {
  const settings = tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_BSP_SCHEDULE_DELAY: '20', ...env })
  if (settings === undefined) throw new Error('tracing is off')
  const logs = new LogCapture()
  const tracing = await startTracing(settings, createLogger('info', logs), '0.0.0-test')
  t.teardown(async () => await tracing.close(2000))
  return { tracing, logs }
}

/** A collector, an identity provider, an API, and the proxy in front of it with traces on, holding its first token. */
async function tracedStack (t: Test, variables: Record<string, string> = {}): Promise<{ collector: Collector, idp: Idp, api: Upstream, url: string, logs: LogCapture, tracing: Tracing, tracerLogs: LogCapture }> {
  const collector = await startCollector(t)
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const { tracing, logs: tracerLogs } = await tracerFor(t, collector, variables)
  const { url, proxy, logs } = await startTestProxy(t, baseEnv(idp, api), { tracing })
  await afterFetch(proxy.tokens, () => proxy.tokens.current() !== undefined, 5000, 'the first token')
  return { collector, idp, api, url, logs, tracing, tracerLogs }
}

const childrenOf = (spans: readonly ReceivedSpan[], parent: ReceivedSpan): ReceivedSpan[] => spans.filter((span) => span.parentSpanId === parent.spanId && span.traceId === parent.traceId)

t.test('a request is a server span continuing the client\'s trace, with a client span per attempt that the upstream continues', async (t) => {
  const { collector, api, url, idp, logs } = await tracedStack(t)

  const response = await request(`${url}/things/1?secret=query-value-Hk29`, { headers: { traceparent: TRACEPARENT, tracestate: 'vendor=opaque-Lm3', 'x-api-key': 'header-value-Pq81' } })
  t.equal(response.statusCode, 200)
  await response.body.dump()
  const spans = await collector.waitFor((all) => all.some((span) => span.kind === SERVER && span.traceId === CLIENT_TRACE), 10_000, 'the server span')

  const server = spanOf(spans, /^GET /, { 'http.request.method': 'GET' })
  t.equal(server.kind, SERVER)
  t.equal(server.traceId, CLIENT_TRACE, 'the client\'s trace continued')
  t.equal(server.parentSpanId, CLIENT_SPAN, 'the client\'s span is the parent')
  t.equal(server.traceState, 'vendor=opaque-Lm3', 'tracestate carried')
  t.equal(server.attributes['url.path'], '/things/1', 'the path without its query')
  t.equal(server.attributes['http.response.status_code'], 200)
  t.equal(server.attributes['http.route'], '/*')
  t.equal(server.name, 'GET /*')
  t.equal(server.attributes['bearer_proxy.route'], 'admin', 'the route\'s name')
  t.equal(server.resource['service.name'], 'bearer-proxy')
  t.equal(server.resource['service.version'], '0.0.0-test')

  const [attempt, ...others] = childrenOf(spans, server)
  t.same(others, [], 'one attempt')
  t.equal(attempt?.kind, CLIENT_KIND)
  t.equal(attempt?.name, 'GET')
  t.equal(attempt?.attributes['url.full'], `${api.url}/things/1`)
  t.equal(attempt?.attributes['http.response.status_code'], 200)
  t.equal(attempt?.attributes['server.address'], '127.0.0.1')

  const seen = api.seen.at(-1)
  t.equal(seen?.headers.traceparent, `00-${CLIENT_TRACE}-${attempt?.spanId ?? ''}-01`, 'the upstream\'s parent is the attempt')
  t.equal(seen?.headers.tracestate, 'vendor=opaque-Lm3')

  // The request's log line names its trace and span.
  const line = logs.lines.map((text) => JSON.parse(text) as Record<string, unknown>).find((entry) => entry.msg === 'request' && entry.path === '/things/1')
  t.equal(line?.traceId, CLIENT_TRACE)
  t.equal(line?.spanId, server.spanId)

  // The first token, asked for at start with no request waiting: a trace of its own.
  const token = spanOf(spans, 'token request')
  t.equal(token.parentSpanId, '', 'a root span')
  t.equal(token.kind, CLIENT_KIND)
  t.equal(token.attributes['bearer_proxy.token.waited'], false)
  t.equal(token.attributes['bearer_proxy.token.grant'], 'client_credentials')
  t.equal(token.attributes['bearer_proxy.token.endpoint'], idp.tokenUrl)
  t.ok(Number(token.attributes['bearer_proxy.token.lifetime_s']) >= 58 && Number(token.attributes['bearer_proxy.token.lifetime_s']) <= 60, 'the lifetime granted, in seconds')
  t.equal(token.status.code, 0)
})

t.test('a 401 about the token shows as two attempts and the token request they waited for, all in the request\'s trace', async (t) => {
  const { collector, api, url } = await tracedStack(t)
  // The token held is revoked early: the upstream refuses it.
  const first = await request(`${url}/warm`)
  await first.body.dump()
  const jti = api.seen.at(-1)?.jti
  if (jti !== undefined) api.revoked.add(jti)

  const response = await request(`${url}/retried`, { method: 'POST', body: 'a body', headers: { traceparent: TRACEPARENT } })
  t.equal(response.statusCode, 200)
  await response.body.dump()
  const spans = await collector.waitFor((all) => all.some((span) => span.kind === SERVER && span.attributes['url.path'] === '/retried') &&
    all.some((span) => span.name === 'token request' && span.traceId === CLIENT_TRACE), 10_000, 'the retried request\'s spans')
  const server = spanOf(spans, /^POST /, { 'url.path': '/retried' })
  const attempts = childrenOf(spans, server).filter((span) => span.name === 'POST').sort((a, b) => Number(a.startNs - b.startNs))
  t.equal(attempts.length, 2, 'two attempts')
  t.equal(attempts[0]?.attributes['http.response.status_code'], 401)
  t.equal(attempts[0]?.attributes['bearer_proxy.retry'], 'token_rejected')
  t.equal(attempts[0]?.status.code, 2)
  t.equal(attempts[1]?.attributes['http.response.status_code'], 200)
  t.equal(attempts[1]?.attributes['http.request.resend_count'], 1)
  const token = spanOf(spans, 'token request', { 'bearer_proxy.token.waited': true })
  t.equal(token.parentSpanId, server.spanId, 'the token request is the waiting request\'s child')
  // Span starts are kept to the millisecond, ends to the nanosecond: compared to the millisecond.
  t.ok(token.startNs >= (attempts[0]?.startNs ?? 0n) && token.endNs <= (attempts[1]?.startNs ?? 0n) + 1_000_000n, `between the two attempts: ${[attempts[0]?.startNs, attempts[0]?.endNs, token.startNs, token.endNs, attempts[1]?.startNs].join(' ')}`)
  t.equal(api.seen.at(-1)?.headers.traceparent, `00-${CLIENT_TRACE}-${attempts[1]?.spanId ?? ''}-01`)
})

t.test('a token request that fails is an error span with the log\'s one-line reason; the request\'s own answer says which', async (t) => {
  const collector = await startCollector(t)
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const { tracing } = await tracerFor(t, collector)
  idp.mode = 'error'
  const { url } = await startTestProxy(t, baseEnv(idp, api), { tracing, backoffMs: 60_000 })
  const response = await request(`${url}/refused`, { headers: { traceparent: TRACEPARENT } })
  t.equal(response.statusCode, 503)
  await response.body.dump()
  const spans = await collector.waitFor((all) => all.some((span) => span.attributes['url.path'] === '/refused'), 10_000, 'the refused request')
  const server = spanOf(spans, /^GET/, { 'url.path': '/refused' })
  t.equal(server.attributes['bearer_proxy.error'], 'token_unavailable')
  t.equal(server.attributes['error.type'], 'token_unavailable')
  t.equal(server.status.code, 2)
  t.same(childrenOf(spans, server).filter((span) => span.kind === CLIENT_KIND && span.name === 'GET'), [], 'no attempt was made')
  const failed = spans.filter((span) => span.name === 'token request' && span.status.code === 2)
  t.ok(failed.length >= 1, 'the failed token request')
  t.match(failed[0]?.status.message, /^token endpoint http:\/\/127\.0\.0\.1:\d+\/token answered 503/)
  t.equal(failed[0]?.attributes['error.type'], '503')
})

t.test('a traceparent that is not one starts a new trace, and nothing of it or its tracestate reaches the upstream', async (t) => {
  const { collector, api, url } = await tracedStack(t)
  const hostile = [
    'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', // version ff is invalid
    '00-00000000000000000000000000000000-00f067aa0ba902b7-01', // all-zero trace id
    '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01', // all-zero span id
    '00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01', // upper case
    '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra', // version 00 with more
    `00-${'a'.repeat(32)}-${'b'.repeat(16)}-01${'x'.repeat(5000)}`,
    'not a traceparent\u00ff'
  ]
  for (const [index, traceparent] of hostile.entries()) {
    const response = await request(`${url}/hostile/${index}`, { headers: { traceparent, tracestate: 'evil=1' } })
    t.equal(response.statusCode, 200, traceparent.slice(0, 60))
    await response.body.dump()
    const seen = api.seen.at(-1)
    t.match(seen?.headers.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/, 'a valid traceparent of the proxy\'s own')
    t.not(seen?.headers.traceparent, traceparent)
    t.notOk(String(seen?.headers.traceparent).includes('4bf92f3577b34da6'), 'not the client\'s trace id')
    t.equal(seen?.headers.tracestate, undefined, 'its tracestate dropped with it')
  }
  const spans = await collector.waitFor((all) => all.filter((span) => span.kind === SERVER && String(span.attributes['url.path']).startsWith('/hostile/')).length === hostile.length)
  for (const server of spans.filter((span) => span.kind === SERVER && String(span.attributes['url.path']).startsWith('/hostile/'))) {
    t.equal(server.parentSpanId, '', `${String(server.attributes['url.path'])}: a root`)
  }

  // A method the proxy does not forward names no span: `_OTHER`, as the conventions say.
  const odd = await request(`${url}/odd`, { method: 'PROPFIND' as 'GET' })
  t.equal(odd.statusCode, 405)
  await odd.body.dump()
  const oddSpans = await collector.waitFor((all) => all.some((span) => span.attributes['url.path'] === '/odd'))
  t.equal(spanOf(oddSpans, /_OTHER/, { 'url.path': '/odd' }).attributes['http.request.method'], '_OTHER')
})

t.test('no secret, token, header value or query in any span, protobuf or JSON, at trace level', async (t) => {
  for (const protocol of ['http/protobuf', 'http/json']) {
    await t.test(protocol, async (t) => {
      const collector = await startCollector(t)
      const idp = await startIdentity(t)
      const api = await startApiOf(t, idp)
      const { tracing } = await tracerFor(t, collector, { OTEL_EXPORTER_OTLP_PROTOCOL: protocol })
      const inbound = 'inbound-key-Vb71-secret-value'
      const { url, proxy, logs } = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_LOG_LEVEL: 'trace', BEARER_PROXY_INBOUND_KEY: inbound }, { tracing })
      await afterFetch(proxy.tokens, () => proxy.tokens.current() !== undefined, 5000, 'the first token')
      const headers = { 'proxy-authorization': `Bearer ${inbound}`, cookie: 'session=cookie-value-Rt55', 'x-api-key': 'header-value-Pq81', traceparent: TRACEPARENT }
      for (const path of ['/a?access_token=query-token-Nn40', '/b?secret=query-value-Hk29']) {
        const response = await request(`${url}${path}`, { headers })
        t.equal(response.statusCode, 200)
        await response.body.dump()
      }
      const refused = await request(`${url}/c`, { headers: { ...headers, 'proxy-authorization': 'Bearer wrong-key-Jf62-guess' } })
      t.equal(refused.statusCode, 403)
      await refused.body.dump()
      await collector.waitFor((all) => all.filter((span) => span.kind === SERVER).length >= 3)
      t.ok(collector.bodies.every((body) => body.type.startsWith(protocol === 'http/json' ? 'application/json' : 'application/x-protobuf')), protocol)
      const tokens = api.seen.map((seen) => String(seen.headers.authorization).replace(/^Bearer /, ''))
      const secrets = fragments([CLIENT.clientSecret, inbound, 'wrong-key-Jf62-guess', 'cookie-value-Rt55', 'header-value-Pq81', 'query-token-Nn40', 'query-value-Hk29', ...tokens])
        .flatMap((value) => spellings(value, CLIENT.clientId))
      assertNoSecret(t, `${protocol} exports`, collector.bodies.map((body) => body.text).join('\n'), secrets)
      assertNoSecret(t, 'decoded spans', JSON.stringify(collector.spans, (_key, value: unknown) => typeof value === 'bigint' ? String(value) : value), secrets)
      assertNoSecret(t, 'the log at trace', logs.text, secrets)
    })
  }
})

t.test('OTEL_TRACES_SAMPLER=always_off records nothing but still passes a trace on; the ratio sampler keeps the share asked', async (t) => {
  const { collector, api, url, tracing } = await tracedStack(t, { OTEL_TRACES_SAMPLER: 'always_off' })
  const response = await request(`${url}/unsampled`, { headers: { traceparent: TRACEPARENT } })
  await response.body.dump()
  t.match(api.seen.at(-1)?.headers.traceparent, new RegExp(`^00-${CLIENT_TRACE}-[0-9a-f]{16}-00$`), 'the same trace, marked not sampled')
  await tracing.close(2000)
  t.same(collector.spans, [], 'no span exported')

  t.same(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:1', OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25' })?.ratio, 0.25)
})

t.test('the OTEL_* variables: off unless an endpoint or exporter asks, and each unusable value refused by name', async (t) => {
  t.equal(tracingSettings({}), undefined, 'nothing set: off')
  t.equal(tracingSettings({ OTEL_SERVICE_NAME: 'x' }), undefined, 'a service name alone: off')
  t.equal(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' }), undefined)
  t.equal(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_TRACES_EXPORTER: 'none' }), undefined)
  t.equal(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/' })?.endpoint.href, 'http://c:4318/v1/traces')
  t.equal(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/base' })?.endpoint.href, 'http://c:4318/base/v1/traces')
  t.equal(tracingSettings({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://c/custom' })?.endpoint.href, 'https://c/custom', 'the signal\'s endpoint as it is')
  t.equal(tracingSettings({ OTEL_TRACES_EXPORTER: 'otlp' })?.endpoint.href, 'http://localhost:4318/v1/traces', 'the specification\'s default')
  t.same(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_BSP_MAX_QUEUE_SIZE: '64' })?.batch, { scheduledDelayMillis: 100, maxQueueSize: 64 })
  const env = { BEARER_PROXY_TOKEN_URL: 'http://127.0.0.1:1/token', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_UPSTREAM: 'http://127.0.0.1:1', BEARER_PROXY_PORT: '0' }
  const refused: Array<[Record<string, string>, RegExp]> = [
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }, /OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" is not supported; use http\/protobuf/],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'thrift' }, /OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "thrift"/],
    [{ OTEL_TRACES_EXPORTER: 'zipkin' }, /OTEL_TRACES_EXPORTER: "zipkin" is not supported; use otlp, or none/],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_TRACES_SAMPLER: 'sometimes' }, /OTEL_TRACES_SAMPLER: "sometimes" is not one of/],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '2' }, /OTEL_TRACES_SAMPLER_ARG: must be a number from 0 to 1/],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'ftp://c' }, /OTEL_EXPORTER_OTLP_ENDPOINT: must be an http:\/\/ or https:\/\/ URL/],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'not a url' }, /OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: not a URL/],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'https://user:collector-pw-Zu47@c' }, /must not carry a user or password/],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_BSP_SCHEDULE_DELAY: 'soon' }, /OTEL_BSP_SCHEDULE_DELAY: must be a whole number of milliseconds/]
  ]
  for (const [variables, expected] of refused) {
    t.throws(() => tracingSettings(variables), expected, JSON.stringify(variables))
    try {
      tracingSettings(variables)
    } catch (error) {
      t.notMatch((error as Error).message, /collector-pw-Zu47/, 'a password in the URL is never repeated')
    }
  }
  // As `serve` says it: exit 2, the variable named, before anything listens.
  for (const [variables, expected] of [refused[0], refused[7]] as Array<[Record<string, string>, RegExp]>) {
    const result = await runCli(['serve'], { ...env, ...variables })
    t.equal(result.code, 2, JSON.stringify(variables))
    t.match(result.stderr, /^bearer-proxy: OTEL_[A-Z_]+: /)
    t.match(result.stderr, expected)
    t.notMatch(result.stderr + result.stdout, /collector-pw-Zu47|"event":"listening"/)
  }
})

t.test('without OTEL_* variables serve loads nothing but dist/cli.js; with them, dist/otel.js too, and SIGTERM sends the last spans', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const collector = await startCollector(t)
  const recorder = moduleRecorder()
  const serve = async (extra: Record<string, string>): Promise<string[]> => {
    recorder.reset()
    const clean = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('BEARER_PROXY_') && !key.startsWith('OTEL_')))
    const child = spawn('env', ['-u', 'NODE_OPTIONS', process.execPath, '--import', recorder.register, CLI, 'serve'],
      { env: { ...clean, ...baseEnv(idp, api), ...extra }, cwd: cleanDirectory(), stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(async () => { if (child.pid !== undefined) await endTree(child.pid) })
    const output = collect(child)
    const ready = JSON.parse(await waitForLine(child, /"event":"ready"/, 15_000)) as { address: string }
    const response = await request(`${ready.address}/last`, { headers: { traceparent: TRACEPARENT } })
    await response.body.dump()
    child.kill('SIGTERM')
    const [code] = await once(child, 'exit') as [number]
    t.equal(code, 0, output().stderr)
    return recorder.loaded()
  }
  t.same(await serve({}), ['dist/cli.js'], 'tracing off: only the bundle')
  // A batch delay longer than the test: only the shutdown's flush can send the request's spans.
  t.same(await serve({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_BSP_SCHEDULE_DELAY: '600000', OTEL_SERVICE_NAME: 'sidecar-of-trainer' }), ['dist/cli.js', 'dist/otel.js'])
  const spans = await collector.waitFor((all) => all.some((span) => span.attributes['url.path'] === '/last'), 5000, 'the last request\'s spans')
  const server = spanOf(spans, /^GET/, { 'url.path': '/last' })
  t.equal(server.traceId, CLIENT_TRACE)
  t.equal(server.resource['service.name'], 'sidecar-of-trainer', 'OTEL_SERVICE_NAME')
  t.equal(childrenOf(spans, server).length, 1)
})

t.test('a collector that is down or refusing costs no request, and is said once, not per batch', async (t) => {
  const { collector, url, tracing, tracerLogs: traceLogs } = await tracedStack(t, { OTEL_EXPORTER_OTLP_TIMEOUT: '300' })
  collector.status = 503
  const send = async (from: number): Promise<void> => {
    for (let i = from; i < from + 10; i++) {
      const response = await request(`${url}/while-down/${i}`)
      t.equal(response.statusCode, 200)
      await response.body.dump()
    }
  }
  await send(0)
  await traceLogs.until((capture) => capture.events('trace_export_failed').length > 0, 15_000, 'the export failure said')
  const tried = collector.bodies.length
  await send(10)
  // More batches fail (the exporter tries each): still the one warning.
  await collector.waitForBodies(tried + 1, 15_000)
  await tracing.close(3000)
  const said = traceLogs.events('trace_export_failed')
  t.equal(said.length, 1, 'one warning')
  t.match(said[0]?.error, /^Export failed/)
})

t.test('WebSocket upgrades: a server span ended by the handshake, and the attempt the upstream continues', async (t) => {
  const { collector, api, url } = await tracedStack(t)
  const { WebSocketServer } = await import('ws')
  const wss = new WebSocketServer({ server: api.server })
  wss.on('connection', (socket, req) => { socket.on('message', (data) => socket.send(`${String(data)} ${String(req.headers.traceparent)}`)) })
  t.teardown(() => { wss.close() })
  const echoed = await wsRoundTrip(`${url.replace('http', 'ws')}/ws/echo`, 'hello')
  const spans = await collector.waitFor((all) => all.some((span) => span.kind === SERVER && span.attributes['url.path'] === '/ws/echo') &&
    all.some((span) => span.kind === CLIENT_KIND && span.attributes['http.response.status_code'] === 101))
  const server = spanOf(spans, 'GET', { 'url.path': '/ws/echo' })
  t.equal(server.attributes['http.response.status_code'], 101)
  t.equal(server.attributes['bearer_proxy.route'], 'admin', 'the route\'s name')
  const [attempt] = childrenOf(spans, server)
  t.equal(attempt?.attributes['http.response.status_code'], 101)
  t.equal(echoed, `hello 00-${server.traceId}-${attempt?.spanId ?? ''}-01`, 'the upstream\'s parent is the attempt')
})

t.test('each read of a Run:ai cluster list is a span: how many clusters are served and skipped, or why the read failed', async (t) => {
  const collector = await startCollector(t)
  const runai = await startRunai(t)
  runai.clusters = [
    { uuid: '0b9f7a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b', tenantId: 1, name: 'gpu-a', domain: `${runai.url}/a`, status: { state: 'Connected' } },
    { uuid: '3e2c0d71-4f50-4182-9d2e-3f4a5b6c7d8e', tenantId: 1, name: 'no-domain', domain: null }
  ]
  const { tracing } = await tracerFor(t, collector)
  const { url, proxy } = await startTestProxy(t, runaiEnv(runai, { BEARER_PROXY_LOG_LEVEL: 'info' }), { tracing })
  const discovery = proxy.discovery as NonNullable<typeof proxy.discovery>
  await bounded(once(discovery, 'change'), 5000, 'the first list')
  const listed = spanOf(await collector.waitFor((all) => all.some((span) => span.name === 'cluster list')), 'cluster list')
  t.equal(listed.parentSpanId, '', 'a trace of its own')
  t.equal(listed.attributes['url.full'], `${runai.url}/api/v1/clusters`)
  t.equal(listed.attributes['bearer_proxy.clusters.served'], 1)
  t.equal(listed.attributes['bearer_proxy.clusters.skipped'], 1)
  t.equal(listed.status.code, 0)

  runai.clusters = 500
  const read = once(discovery, 'refresh')
  await discovery.refresh()
  await bounded(read, 5000, 'the failed read')
  const failed = spanOf(await collector.waitFor((all) => all.some((span) => span.name === 'cluster list' && span.status.code === 2)), 'cluster list', { 'error.type': 'cluster_list_failed' })
  t.match(failed.status.message, /\/api\/v1\/clusters answered 500$/)
  const answer = await request(`${url}/clusters/gpu-a/x`)
  t.equal(answer.statusCode, 200, 'the last good list is kept')
  await answer.body.dump()
})
