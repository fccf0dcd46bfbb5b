import type { Server } from 'node:http'
import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import { createApp, ownEndpoints } from './app.js'
import type { Config, TokenSettings } from './config.js'
import { CredentialSet, type Outbound, outboundOf, type SetContext } from './credential-set.js'
import { ClusterDiscovery, type DiscoveredCluster } from './cluster-discovery.js'
import { ProxyError, sendProxyError } from './errors.js'
import { createGuard, type Guard, guardHook } from './guard.js'
import { Metrics } from './metrics.js'
import { discoveredRoutes, proxyRoutes, type ServedRoute, serveRoute } from './proxy.js'
import { ADMIN_ROUTE, clusterRootsOf, clusterSources, defaultSet, OWN_PREFIX, RouteTable, routesOf } from './routes.js'
import { digestOf, type SecretSource } from './secret.js'
import type { Clock } from './token/clock.js'
import type { TokenManager } from './token/manager.js'
import type { Tracing } from './tracing.js'

/**
 * A configuration being served, as a generation: its routes, guard, clusters and
 * Fastify app, built in full from one configuration and replaced whole by a reload.
 */

/** What the listener and every generation of the configuration share. */
export interface ProxyContext {
  readonly log: Logger
  readonly dispatcher: Dispatcher
  readonly metrics: Metrics
  /** One token manager per credential set, by name: reloads add and remove sets; read at each request. */
  readonly setTokens: Map<string, TokenManager>
  /** Set once shutdown starts: each keep-alive connection is then closed when its request is answered. */
  closing: boolean
  /** Where idle connections are closed during shutdown. */
  server: Server | undefined
  /** Traces, when the `OTEL_*` variables ask for them. */
  readonly tracing: Tracing | undefined
}

/**
 * What one configuration serves: its routes and their policy, its discovered clusters
 * and the Fastify app that routes its requests. A reload builds a new one and swaps
 * it in whole; a request routed before the swap finishes on the one it started on.
 */
export interface Generation {
  readonly config: Config
  readonly table: RouteTable<ServedRoute>
  readonly guard: Guard
  readonly app: FastifyInstance
  /** One discovery per root that discovers its clusters (`/clusters/`, a route's `<prefix>/clusters/`). */
  readonly clusters: readonly DiscoveredClusters[]
  /** The settings it was built with, as `settingsOf` reads them, for the next reload's comparison. */
  readonly settings: Partial<Record<keyof Config, string>>
}

/**
 * The app of one configuration: the guard, the proxy's own endpoints, one forwarding
 * route per upstream and the discovered clusters. It never listens: the listener
 * hands it requests while it is the generation serving.
 */
async function buildGeneration (config: Config, shared: ProxyContext, routes: readonly ServedRoute[], clusters: readonly DiscoveredClusters[]): Promise<Generation> {
  const { log, metrics } = shared
  const table = new RouteTable(routes, clusterRootsOf(config))
  const app = createApp(log, (target) => table.clusterHint(target))
  const guard = createGuard(config, (path) => table.canonical(path))
  app.addHook('onRequest', guardHook(guard))

  // Callback style: no promise per request; the log line is only built when it is written.
  const hinted = new Set<string>()
  const hintCluster = (target: string): void => {
    const hint = table.clusterHint(target)
    if (hint === undefined || hinted.has(hint)) return
    hinted.add(hint)
    log.warn({ event: 'cluster_path_hint', meant: hint }, `the admin API answered 404 to a path that starts with a cluster's name; clusters are served at ${hint}`)
  }
  const { tracing } = shared
  app.addHook('onResponse', (request, reply, done) => {
    // While shutting down, a keep-alive connection is closed as soon as its request is answered.
    if (shared.closing) setImmediate(() => shared.server?.closeIdleConnections())
    const upstream = request.upstreamName ?? request.routeOptions.config.upstream
    tracing?.routed(request.raw, request.routeOptions.url, upstream, request.proxyError)
    const elapsed = reply.elapsedTime
    metrics.observe(upstream ?? 'none', reply.statusCode, elapsed / 1000)
    // The admin API's 404 passes through unchanged; the hint goes to the log, once per cluster.
    if (reply.statusCode === 404 && upstream === ADMIN_ROUTE) hintCluster(request.raw.url ?? '')
    // Probes and scrapes (the proxy's own endpoints) at debug: they come every few seconds.
    const level = upstream === undefined && request.raw.url?.startsWith(OWN_PREFIX) === true ? 'debug' : 'info'
    if (log.isLevelEnabled(level)) {
      const url = request.raw.url ?? ''
      const query = url.indexOf('?')
      // The root logger with the id as a field: no per-request child logger.
      const line: Record<string, unknown> = {
        reqId: request.id,
        method: request.method,
        path: query === -1 ? url : url.slice(0, query),
        upstream,
        status: reply.statusCode,
        durationMs: Math.round(elapsed * 10) / 10
      }
      if (tracing !== undefined) Object.assign(line, tracing.ids(request.raw))
      log[level](line, 'request')
    }
    done()
  })

  ownEndpoints(app, { setTokens: shared.setTokens, metrics, table: () => table })

  app.decorateRequest('upstreamName', undefined)
  for (const root of clusterRootsOf(config)) {
    const discovered = clusters.find((feed) => feed.root === root)
    if (discovered === undefined) {
      // A cluster that is not configured must never fall through to the control plane's API.
      app.all(`${root}*`, async (request, reply) => {
        const resolved = table.resolve(request.raw.url ?? '')
        sendProxyError(reply, resolved instanceof ProxyError ? resolved : table.unknownCluster(root, ''))
      })
    } else {
      // Clusters that come and go: one route resolves them in the table at each request.
      discovered.attach(table)
      await app.register(discoveredRoutes, { root, table, refresh: async () => await discovered.discovery.refreshIfStale(), admit: guard, timeout: config.timeout, log })
    }
  }
  await app.register(proxyRoutes, { routes: table.routes, timeout: config.timeout, log })
  try {
    await app.ready()
  } catch (error) {
    for (const feed of clusters) feed.detach(table)
    throw error
  }
  return { config, table, guard, app, clusters, settings: settingsOf(config) }
}

/** What a reload changed, by name (never a value): credential sets, routes, other settings, and what waits for a restart. */
export interface ReloadSummary {
  readonly sets: Changes
  readonly routes: Changes
  /** The names of the other settings that changed and now apply (the inbound policy, clusters). */
  readonly settings: string[]
  /** Settings a running proxy cannot take on, left as they were until a restart. */
  readonly needsRestart: string[]
}

export interface Changes { readonly added: string[], readonly changed: string[], readonly removed: string[] }

/** A configuration's routes, each as it is configured, by name. */
function routesByName (config: Config): Map<string, string> {
  const routes = new Map<string, string>(routesOf(config).map((route) => [route.name, JSON.stringify(route)]))
  // A route's own policy is part of it.
  for (const route of config.prefixRoutes) routes.set(route.name, JSON.stringify(route, (_key, value: unknown) => value instanceof Map ? [...value] : value))
  return routes
}

/** Which names are new in `after`, gone from `before`, or in both and `changed`. */
function diff (before: readonly string[], after: readonly string[], changed: (name: string) => boolean): Changes {
  return {
    added: after.filter((name) => !before.includes(name)),
    changed: after.filter((name) => before.includes(name) && changed(name)),
    removed: before.filter((name) => !after.includes(name))
  }
}

/** Settings a reload applies, besides credential sets and routes; the inbound key by a digest, never its value. */
const APPLIED: ReadonlyArray<keyof Config> = ['readOnly', 'allowPaths', 'denyPaths', 'allowedHosts', 'allowedOrigins', 'allowAnonymous', 'inboundKey', 'discoverClusters']
/** Settings a running proxy cannot take on without a restart. */
const RESTART: ReadonlyArray<keyof Config> = ['host', 'port', 'socket', 'adminAddress', 'caFile', 'insecureSkipVerify', 'timeout', 'logLevel', 'logFormat', 'tokenFile']

/** Which of `keys` differ between two configurations, as each read them when it was built. */
function changedSettings (running: Generation | Config, next: Generation | Config, keys: ReadonlyArray<keyof Config>): string[] {
  const [before, after] = [running, next].map((one) => 'settings' in one ? one.settings : settingsOf(one as Config))
  return keys.filter((key) => before?.[key] !== after?.[key])
}

/**
 * The settings of a configuration as comparable strings: the inbound key by a digest of
 * its value, never the value, read once (its file may change before the next reload).
 */
function settingsOf (config: Config): Partial<Record<keyof Config, string>> {
  const shapes: Partial<Record<keyof Config, string>> = {}
  for (const key of [...APPLIED, ...RESTART]) {
    const value = config[key]
    if (key !== 'inboundKey' || value === undefined) {
      shapes[key] = JSON.stringify(value)
      continue
    }
    shapes[key] = digestOf(value as SecretSource)
  }
  return shapes
}
/**
 * Clusters a Run:ai control plane lists, as routes under one root, kept in the route
 * table of each generation that serves them; a cluster whose URL did not change
 * keeps its route (and what its 401s taught it).
 */
class DiscoveredClusters {
  readonly discovery: ClusterDiscovery
  readonly root: string
  readonly controlPlane: URL
  readonly #tokens: TokenManager
  readonly #dispatcher: Dispatcher
  readonly #tables = new Set<RouteTable<ServedRoute>>()
  #served = new Map<string, ServedRoute>()
  #entries: ReadonlyArray<{ readonly route: ServedRoute, readonly uuid: string }> | undefined

  constructor (discovery: ClusterDiscovery, where: { root: string, controlPlane: URL, tokens: TokenManager, dispatcher: Dispatcher }, serve: (name: string, upstream: URL) => ServedRoute) {
    this.discovery = discovery
    this.root = where.root
    this.controlPlane = where.controlPlane
    this.#tokens = where.tokens
    this.#dispatcher = where.dispatcher
    discovery.on('change', (clusters: readonly DiscoveredCluster[]) => {
      const next = new Map<string, ServedRoute>()
      const entries = clusters.map(({ name, uuid, url }) => {
        const kept = this.#served.get(name)
        const route = kept !== undefined && kept.upstream.href === url.href ? kept : serve(name, url)
        next.set(name, route)
        return { route, uuid }
      })
      this.#served = next
      this.#entries = entries
      for (const table of this.#tables) table.replaceClusters(this.root, entries)
    })
  }

  /** Whether this is the discovery of `root` from `controlPlane` with `tokens`, through `dispatcher`. */
  serves (root: string, controlPlane: URL, tokens: TokenManager, dispatcher: Dispatcher): boolean {
    return this.root === root && this.controlPlane.href === controlPlane.href && this.#tokens === tokens && this.#dispatcher === dispatcher
  }

  /** Keeps `table`'s clusters under this root these, from now on. */
  attach (table: RouteTable<ServedRoute>): void {
    this.#tables.add(table)
    if (this.#entries !== undefined) table.replaceClusters(this.root, this.#entries)
  }

  detach (table: RouteTable<ServedRoute>): void {
    this.#tables.delete(table)
  }
}

export interface LiveConfigurationOptions {
  /** Token back-off and renewal point, for tests that cannot wait a second. */
  readonly backoffMs?: number
  readonly renewAt?: number
  /** The token managers' clock: a test's, to move their time on. */
  readonly clock?: Clock
  /** Cluster discovery's timings (5 minutes, 30 s), for tests that cannot wait. */
  readonly discovery?: { readonly intervalMs?: number, readonly onDemandMs?: number }
}

/** What a configuration is served with, from outside it: the log, the shared dispatcher, the tracer. */
type Parts = Pick<ProxyContext, 'log' | 'dispatcher' | 'tracing'>

/** What a route takes of its credential set: its token manager, and the dispatcher its upstream requests go out by. */
interface SetParts { readonly tokens: TokenManager, readonly upstreams: Dispatcher }

/** A number per dispatcher, so that a route kept by a reload is one that goes out the same way. */
const dispatcherIds = new WeakMap<Dispatcher, number>()
let dispatchers = 0
function idOf (dispatcher: Dispatcher): number {
  const known = dispatcherIds.get(dispatcher)
  if (known !== undefined) return known
  dispatcherIds.set(dispatcher, ++dispatchers)
  return dispatchers
}

/**
 * The configuration served now, and its replacement by a reload: the credential
 * sets (kept, reconfigured, closed or made), the routes (kept whole while
 * unchanged), the cluster discoveries, and the generation that routes requests.
 */
export class LiveConfiguration {
  readonly shared: ProxyContext
  /** The first credential set's token manager at start (the only one without credential sets). */
  readonly tokens: TokenManager
  readonly #started: Config
  readonly #options: LiveConfigurationOptions
  #current!: Generation
  /** Routes by what they are configured as: a route a reload keeps is kept whole, with what its 401s taught it. */
  #served = new Map<string, ServedRoute>()
  /** One object per credential set: a route's tokens come from its own set, and no other. */
  readonly #sets: Map<string, CredentialSet>

  private constructor (config: Config, parts: Parts, options: LiveConfigurationOptions) {
    this.#started = config
    this.#options = options
    this.#sets = new Map([...config.credentialSets].map(([name, settings]) => [name, new CredentialSet(name, settings, this.#context(name, config, parts))]))
    const setTokens = new Map([...this.#sets].map(([name, set]) => [name, set.tokens]))
    this.tokens = setTokens.get(defaultSet(config)) as TokenManager
    this.shared = { ...parts, metrics: new Metrics(setTokens), setTokens, closing: false, server: undefined }
  }

  /** The first generation built, its token managers made but not started. */
  static async build (config: Config, parts: Parts, options: LiveConfigurationOptions = {}): Promise<LiveConfiguration> {
    const configurations = new LiveConfiguration(config, parts, options)
    const sets = configurations.#sets
    const routes = configurations.#serve(config, sets)
    configurations.#current = await buildGeneration(config, configurations.shared, routes.routes, configurations.#clusters(config, sets, []))
    routes.keep()
    return configurations
  }

  /** The generation serving now. */
  get current (): Generation {
    return this.#current
  }

  /** Token requests and discoveries begin: once the proxy can be reached, so that a listener that fails costs none. */
  start (): void {
    for (const feed of this.#current.clusters) feed.discovery.start()
    for (const set of this.#sets.values()) set.tokens.start()
  }

  /**
   * A reload: `next` is built in full beside the running generation, then swapped in
   * at once (nothing awaits from the swap on). Throws, changing nothing, when the new
   * routes cannot be built.
   */
  async reconfigure (next: Config): Promise<ReloadSummary> {
    const { setTokens, metrics } = this.shared
    const running = this.#sets
    const sets = diff([...running.keys()], [...next.credentialSets.keys()], (name) => (running.get(name) as CredentialSet).changedBy(next.credentialSets.get(name) as TokenSettings))
    // Changed sets go out by dispatchers made from their files as they are now; new sets are made whole, not started.
    const changed = new Map<string, Outbound>()
    const added = new Map<string, CredentialSet>()
    const discard = (): void => {
      for (const outbound of changed.values()) void outbound.own?.close()
      for (const set of added.values()) void set.close()
    }
    try {
      for (const name of sets.changed) changed.set(name, outboundOf(next.credentialSets.get(name) as TokenSettings, this.#context(name, next, this.shared)))
      for (const name of sets.added) added.set(name, new CredentialSet(name, next.credentialSets.get(name) as TokenSettings, this.#context(name, next, this.shared)))
    } catch (error) {
      // A certificate that changed again since it was checked: nothing made so far is kept.
      discard()
      throw error
    }
    const plan = new Map([...next.credentialSets.keys()].map((name) => [name, {
      tokens: (added.get(name) ?? running.get(name) as CredentialSet).tokens,
      upstreams: changed.get(name)?.upstreams ?? (added.get(name) ?? running.get(name) as CredentialSet).upstreams
    }]))
    const routes = this.#serve(next, plan)
    const clusters = this.#clusters(next, plan, this.#current.clusters)
    let generation: Generation
    try {
      generation = await buildGeneration(next, this.shared, routes.routes, clusters)
    } catch (error) {
      for (const feed of clusters) if (!this.#current.clusters.includes(feed)) feed.discovery.close()
      discard()
      throw error
    }
    const previous = this.#current
    this.#current = generation
    routes.keep()
    for (const feed of previous.clusters) {
      feed.detach(previous.table)
      if (!generation.clusters.includes(feed)) feed.discovery.close()
    }
    for (const name of sets.removed) {
      const set = running.get(name) as CredentialSet
      // Graceful: requests already on their way finish.
      void set.close()
      metrics.forget(name, set.tokens)
      setTokens.delete(name)
      running.delete(name)
    }
    for (const [name, outbound] of changed) (running.get(name) as CredentialSet).reconfigure(next.credentialSets.get(name) as TokenSettings, outbound)
    for (const [name, set] of added) {
      running.set(name, set)
      setTokens.set(name, set.tokens)
      metrics.count(name, set.tokens)
      set.tokens.start()
    }
    for (const feed of generation.clusters) if (!previous.clusters.includes(feed)) feed.discovery.start()
    const [before, after] = [routesByName(previous.config), routesByName(next)]
    return {
      sets,
      routes: diff([...before.keys()], [...after.keys()], (name) => before.get(name) !== after.get(name)),
      settings: changedSettings(previous, generation, APPLIED),
      needsRestart: changedSettings(this.#started, next, RESTART)
    }
  }

  /** No more renewals or discoveries; the generation's app and the sets' own dispatchers closed. */
  async close (): Promise<void> {
    for (const feed of this.#current.clusters) feed.discovery.close()
    await this.#current.app.close()
    await Promise.all([...this.#sets.values()].map(async (set) => await set.close()))
  }

  /** What a set of `of` is made with: token lines name their set when there are several. */
  #context (name: string, of: Config, parts: Parts): SetContext {
    // `set`, not `credentials`: a field named like a credential is redacted.
    const log = of.credentialSets.size > 1 ? parts.log.child({ set: name }) : parts.log
    return { log, dispatcher: parts.dispatcher, tracing: parts.tracing, outbound: this.#started, clock: this.#options.clock, backoffMs: this.#options.backoffMs, renewAt: this.#options.renewAt }
  }

  /** The routes of `of`, each with its set's token manager; `keep()` makes them the ones the next reload compares with. */
  #serve (of: Config, sets: ReadonlyMap<string, SetParts>): { routes: ServedRoute[], keep: () => void } {
    const next = new Map<string, ServedRoute>()
    const routes = routesOf(of).map((route) => {
      const { tokens, upstreams } = sets.get(route.set) as SetParts
      const key = `${JSON.stringify(route)} ${idOf(upstreams)}`
      const kept = this.#served.get(key)
      const made = kept !== undefined && tokens === this.shared.setTokens.get(route.set)
        ? kept
        : serveRoute(route, upstreams, tokens, this.shared.log, this.shared.tracing)
      next.set(key, made)
      return made
    })
    return { routes, keep: () => { this.#served = next } }
  }

  /**
   * The discoveries a configuration runs: the top level's, and each route's. One that
   * asks the same control plane with the same set, the same way, for the same root, keeps running.
   */
  #clusters (of: Config, sets: ReadonlyMap<string, SetParts>, running: readonly DiscoveredClusters[]): DiscoveredClusters[] {
    const { log, tracing } = this.shared
    return clusterSources(of).flatMap(({ root, controlPlane, set: name, route }) => controlPlane === undefined ? [] : [{ root, controlPlane, name, route }]).map(({ root, controlPlane, name, route }) => {
      const { tokens: manager, upstreams: dispatcher } = sets.get(name) as SetParts
      const kept = running.find((feed) => feed.serves(root, controlPlane, manager, dispatcher))
      if (kept !== undefined) return kept
      const discovery = new ClusterDiscovery({ controlPlane, tokens: manager, dispatcher, log, tracing, timeout: of.timeout, ...this.#options.discovery })
      return new DiscoveredClusters(discovery, { root, controlPlane, tokens: manager, dispatcher }, (cluster, upstream) =>
        serveRoute({ name: route === undefined ? cluster : `${route}/${cluster}`, prefix: `${root}${cluster}`, upstream, set: name }, dispatcher, manager, log, tracing))
    })
  }
}
