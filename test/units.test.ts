import pino from 'pino'
import t from 'tap'
import { Agent, type Dispatcher } from 'undici'
import { BearerDispatcher } from '../src/bearer.js'
import type { TokenSettings } from '../src/config.js'
import { parseAddress } from '../src/config.js'
import { ProxyError } from '../src/errors.js'
import { checkPath } from '../src/guard.js'
import { Metrics } from '../src/metrics.js'
import { clusterRootsOf, locationRewriter, RouteTable, routesOf } from '../src/routes.js'

t.test('parseAddress: host:port, [v6]:port, a bare port on loopback; nothing else', async (t) => {
  t.same(parseAddress('9090'), { host: '127.0.0.1', port: 9090 }, 'a bare port is 127.0.0.1:<port>')
  t.same(parseAddress('0.0.0.0:9090'), { host: '0.0.0.0', port: 9090 })
  t.same(parseAddress('[::]:9090'), { host: '::', port: 9090 })
  t.same(parseAddress('metrics.local:0'), { host: 'metrics.local', port: 0 })
  for (const bad of ['', ':9090', 'host:', 'host', '9090x', '70000', 'host:70000', '[::1]9090', 'a b:1', '1.2.3.4:5:6']) {
    t.type(parseAddress(bad), 'string', JSON.stringify(bad))
  }
})

t.test('checkPath: what is judged is what is forwarded', async (t) => {
  t.equal(checkPath('/api/v1/jobs'), '/api/v1/jobs')
  t.equal(checkPath('/api/v1/%41bc'), '/api/v1/Abc', 'decoded once')
  t.equal(checkPath('/clusters/a/.hidden'), '/clusters/a/.hidden')
  for (const bad of ['/a//b', '/a;b', '/a%3bb', '/a%23b', '/a%3Fb', '/a/../b', '/a/%2e%2e/b', '/a%2fb', '/a\\b', '/a%252e', '/a%00b', '/%zz', '/%63lusters/a', '/clusters/%61/x', '/%2d/ready']) {
    t.ok(checkPath(bad) instanceof ProxyError, bad)
  }
})

/** The credential sets and file routes of an environment-only configuration. */
const ONE_SET = { credentialSets: new Map([['default', {} as TokenSettings]]), prefixRoutes: [] }
const NO_POLICY = { readOnly: false, allowPaths: [], denyPaths: [], clusters: new Map<string, URL>(), discoverClusters: false }

t.test('the route table: one answer for every part that needs a route', async (t) => {
  const table = new RouteTable(routesOf({
    ...ONE_SET,
    upstream: new URL('https://admin.example/base/'),
    clusters: new Map([['gpu', new URL('https://gpu.example/researcher')], ['cpu', new URL('https://cpu.example')]])
  }))
  const resolve = (target: string): string => {
    const resolved = table.resolve(target)
    return resolved instanceof ProxyError ? `${resolved.code}: ${resolved.message}` : `${resolved.route.name} ${resolved.path}`
  }
  t.equal(resolve('/api/v1/x?y=1'), 'admin /base/api/v1/x?y=1')
  t.equal(resolve('/clusters/gpu/api/v1/jobs'), 'gpu /researcher/api/v1/jobs')
  t.equal(resolve('/clusters/gpu'), 'gpu /researcher/')
  t.equal(resolve('/clusters/gpu?watch=1'), 'gpu /researcher/?watch=1')
  t.equal(resolve('/clusters/cpu/x'), 'cpu /x')
  t.equal(resolve('/clusters/tpu/x'), 'unknown_cluster: no cluster named "tpu" is configured (configured: gpu, cpu)')
  t.equal(resolve('/clusters'), 'admin /base/clusters', 'no trailing slash: the admin API\'s own path')
  t.match(resolve('/-/ready'), /^not_found/)
  t.match(resolve('/x'), /^admin/)
  const none = new RouteTable(routesOf({ ...ONE_SET, upstream: undefined, clusters: new Map() }))
  t.match(none.resolve('/x'), { code: 'not_found' })
  t.match(none.resolve('/clusters/a/x'), { code: 'unknown_cluster', message: /no clusters are configured/ })

  // The routes of a configuration file, at their prefixes: whole segments, longest first.
  const credentialSets = new Map([['a', {} as TokenSettings], ['b', {} as TokenSettings]])
  const prefixed = new RouteTable(routesOf({
    upstream: undefined,
    clusters: new Map(),
    credentialSets,
    prefixRoutes: [
      { name: 'runai', prefix: '/runai', upstream: new URL('https://runai.example/'), set: 'a', ...NO_POLICY },
      { name: 'runai-v2', prefix: '/runai/v2', upstream: new URL('https://v2.example/base'), set: 'b', ...NO_POLICY }
    ]
  }))
  const at = (target: string): string => {
    const resolved = prefixed.resolve(target)
    return resolved instanceof ProxyError ? resolved.code : `${resolved.route.name} ${resolved.path}`
  }
  t.equal(at('/runai/api/x?y'), 'runai /api/x?y')
  t.equal(at('/runai'), 'runai /')
  t.equal(at('/runai?q'), 'runai /?q')
  t.equal(at('/runai/v2/x'), 'runai-v2 /base/x', 'the longer prefix wins')
  t.equal(at('/runaix/y'), 'not_found', 'a prefix is whole segments')
  t.same(prefixed.names(), ['runai', 'runai-v2'], 'in the configuration\'s order')

  // A route's own clusters: under <prefix>/clusters/, never falling through to the route's API.
  const config = {
    upstream: undefined,
    clusters: new Map(),
    credentialSets,
    discoverClusters: false,
    prefixRoutes: [
      { name: 'runai', prefix: '/runai', upstream: new URL('https://runai.example/'), set: 'a', ...NO_POLICY, clusters: new Map([['gpu', new URL('https://gpu.example/base')]]) },
      { name: 'other', prefix: '/other', upstream: new URL('https://other.example/'), set: 'b', ...NO_POLICY }
    ]
  }
  const own = new RouteTable(routesOf(config), clusterRootsOf(config))
  const under = (target: string): string => {
    const resolved = own.resolve(target)
    return resolved instanceof ProxyError ? `${resolved.code}: ${resolved.message}` : `${resolved.route.name} ${resolved.route.set} ${resolved.path}`
  }
  t.equal(under('/runai/clusters/gpu/api/x?y'), 'runai/gpu a /base/api/x?y')
  t.equal(under('/runai/clusters/gpu'), 'runai/gpu a /base/')
  t.equal(under('/runai/clusters/tpu/x'), 'unknown_cluster: no cluster named "tpu" is configured under /runai/clusters/ (configured: gpu)')
  t.equal(under('/runai/clusters'), 'runai a /clusters', 'no trailing slash: the route\'s own API')
  t.equal(under('/runai/api'), 'runai a /api')
  t.equal(under('/other/clusters/gpu/x'), 'other b /clusters/gpu/x', 'a route without clusters forwards the path')
  t.match(under('/clusters/gpu/x'), /^unknown_cluster: no cluster named "gpu" is configured \(no clusters/, 'the top level has none')
  t.same(clusterRootsOf(config), ['/clusters/', '/runai/clusters/'])
  t.same(own.names(), ['runai', 'other', 'runai/gpu'])
})

t.test('Location rewriting: the route\'s own upstream back to the proxy, anything else untouched', async (t) => {
  const [gpu, admin] = routesOf({ ...ONE_SET, upstream: new URL('https://admin.example'), clusters: new Map([['gpu', new URL('https://gpu.example/base/')]]) })
  const onGpu = locationRewriter(gpu!)
  t.equal(onGpu('https://gpu.example/base/jobs/1?x=1'), '/clusters/gpu/jobs/1?x=1')
  t.equal(onGpu('https://gpu.example/base'), '/clusters/gpu/')
  t.equal(onGpu('https://gpu.example/base?x'), '/clusters/gpu/?x')
  t.equal(onGpu('https://gpu.example/basement'), 'https://gpu.example/basement', 'a longer segment is another path')
  t.equal(onGpu('https://gpu.example/other'), 'https://gpu.example/other', 'outside the base path')
  t.equal(onGpu('https://elsewhere.example/base/x'), 'https://elsewhere.example/base/x')
  t.equal(onGpu('/relative'), '/relative')
  t.equal(locationRewriter(admin!)('https://admin.example/next'), '/next')
})

t.test('metrics: Node\'s process metrics (an event-loop timer, a GC observer) start at the first scrape, once', async (t) => {
  const metrics = new Metrics(new Map())
  const processSeries = (): string[] => metrics.registry.getMetricsAsArray().map(({ name }) => name).filter((name) => /^bearer_proxy_(process|nodejs)_/.test(name))
  t.same(processSeries(), [], 'none before anyone scrapes')
  metrics.observe('admin', 200, 0.002)
  const first = await metrics.scrape()
  t.match(first, /^bearer_proxy_requests_total\{upstream="admin",status="200"\} 1$/m)
  t.match(first, /^bearer_proxy_process_cpu_user_seconds_total \d/m)
  // The event-loop monitor has no sample yet: its series are absent, not 0, 2^63 ns or Nan.
  t.notMatch(first, /^bearer_proxy_nodejs_eventloop_lag_\w*seconds /m, 'no lag series before the monitor has a sample')
  t.notMatch(first, /\bnan$/im, 'no NaN anywhere')
  const count = processSeries().length
  t.ok(count > 10, `${count} process series`)
  // The monitor samples every 100 ms and starts afresh at each scrape: no event says when it has, so a bounded wait.
  let later = ''
  for (let tries = 0; tries < 20 && !/^bearer_proxy_nodejs_eventloop_lag_mean_seconds \d/m.test(later); tries++) {
    await new Promise((resolve) => setTimeout(resolve, 300))
    later = await metrics.scrape()
  }
  t.match(later, /^bearer_proxy_nodejs_eventloop_lag_mean_seconds \d/m, 'the lag once measured')
  t.match(later, /^bearer_proxy_nodejs_eventloop_lag_p50_seconds \d/m)
  t.notMatch(later, /\bnan$/im)
  t.equal(processSeries().length, count, 'a second scrape registers nothing again')
})

t.test('a route\'s dispatcher takes the handlers of undici\'s request(); another kind is refused at once, never half-served', async (t) => {
  const agent = new Agent()
  t.teardown(async () => { await agent.close() })
  let asked = 0
  const tokens = { current: () => { asked++ }, get: async () => { asked++; throw new Error('not asked') } }
  const dispatcher = new BearerDispatcher(agent, { route: 'admin', tokens, refusals: {} } as never, pino({ level: 'silent' }))
  const options: Dispatcher.DispatchOptions = { origin: 'http://127.0.0.1:9', path: '/', method: 'GET', headers: {} }
  t.throws(() => dispatcher.dispatch(options, { onResponseStart () {} } as Dispatcher.DispatchHandler), { name: 'TypeError', message: /request\(\), stream\(\) and pipeline\(\)/ })
  t.equal(asked, 0, 'no token was looked at')
})
