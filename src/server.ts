import { createHash, randomUUID } from 'node:crypto'
import { chmodSync, rmSync, statSync } from 'node:fs'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyServerFactory } from 'fastify'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import { createServer, type Server } from 'node:http'
import { type Config, fingerprintOf, type TokenSettings } from './config.js'
import { readSecret, type SecretSource } from './secret.js'
import { createDispatcher } from './outbound.js'
import { RequestLogger } from './log.js'
import { displayUrl, PROXY_ERRORS, ProxyError, type ProxyErrorCode, rawErrorResponse, sendProxyError } from './errors.js'
import { createGuard, type Guard, guardHook } from './guard.js'
import { Metrics } from './metrics.js'
import { discoveredRoutes, proxyRoutes, type ServedRoute, serveRoute } from './proxy.js'
import { ClusterDiscovery, type DiscoveredCluster } from './discovery.js'
import { clusterRoot, clusterRootsOf, CLUSTERS_PREFIX, RouteTable, routesOf } from './routes.js'
import { tokenFileSink } from './token/file.js'
import { TokenManager } from './token/manager.js'
import { websocketTunnel } from './websocket.js'

const CONNECT_REFUSED = new ProxyError('method_not_allowed', 'CONNECT is not supported: this is not a forward proxy')

/** What Node's HTTP parser refused, in the proxy's words; the connection is closed, its framing cannot be trusted. */
function clientError (error: NodeJS.ErrnoException & { reason?: unknown }): ProxyError {
  const code = error.code ?? ''
  if (code === 'HPE_HEADER_OVERFLOW') return new ProxyError('headers_too_large', 'the request headers are larger than this proxy accepts')
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return new ProxyError('request_timeout', 'the request was not received in time')
  // llhttp's own fixed wording ("Content-Length can't be present with Transfer-Encoding"), never the client's bytes.
  const reason = typeof error.reason === 'string' ? error.reason.replace(/[^\w '.,-]/g, '').slice(0, 100) : 'malformed request'
  return new ProxyError('bad_request', `the HTTP parser refused the request: ${reason}${code === '' ? '' : ` (${code})`}`)
}

/** What the listener and every generation of the configuration share. */
interface Shared {
  readonly log: Logger
  readonly dispatcher: Dispatcher
  readonly metrics: Metrics
  /** One token manager per credential set, by name: reloads add and remove sets; read at each request. */
  readonly credentials: Map<string, TokenManager>
  /** Set once shutdown starts: each keep-alive connection is then closed when its request is answered. */
  closing: boolean
  /** Where idle connections are closed during shutdown. */
  server: Server | undefined
}

/**
 * What one configuration serves: its routes and their policy, its discovered clusters
 * and the Fastify app that routes its requests. A reload builds a new one and swaps
 * it in whole; a request routed before the swap finishes on the one it started on.
 */
interface Generation {
  readonly config: Config
  readonly table: RouteTable<ServedRoute>
  readonly guard: Guard
  readonly app: FastifyInstance
  /** One discovery per root that discovers its clusters (`/clusters/`, a route's `<prefix>/clusters/`). */
  readonly clusters: readonly DiscoveredClusters[]
  /** The settings it was built with, as `settingsOf` reads them, for the next reload's comparison. */
  readonly settings: Partial<Record<keyof Config, string>>
}

const KNOWN_METHODS = new Set(['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS'])
/**
 * A Fastify instance with what every app shares: logging, error bodies, CONNECT
 * refused. `serverFactory` makes the server of the listener that hands each request
 * to the generation serving now.
 */
function createApp (log: Logger, meant: (target: string) => string | undefined = () => undefined, serverFactory?: FastifyServerFactory): FastifyInstance {
  const app = Fastify({
    ...(serverFactory === undefined ? {} : { serverFactory }),
    loggerInstance: log as FastifyBaseLogger,
    // One line per request, written in onResponse, instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => randomUUID(),
    childLoggerFactory: (logger, bindings, options) => new RequestLogger(logger as unknown as Logger, String(bindings.reqId), options.level) as unknown as FastifyBaseLogger,
    // Keep-alive sockets with no request in flight close at once on shutdown.
    forceCloseConnections: 'idle',
    return503OnClosing: true,
    // A missing Host is judged by the guard, so that its answer has the proxy's error shape.
    http: { requireHostHeader: false },
    clientErrorHandler: (error: NodeJS.ErrnoException, socket) => {
      if (error.code === 'ECONNRESET' || socket.destroyed) return
      if (socket.writable) socket.write(rawErrorResponse(clientError(error)))
      socket.destroy()
    },
    // Targets Fastify cannot parse get the same JSON errors as everything else.
    frameworkErrors: (error, _request, reply) => sendProxyError(reply, new ProxyError('bad_request', `the request target is malformed (${error.code})`))
  })
  app.server.on('connect', (_request, socket) => {
    socket.end(rawErrorResponse(CONNECT_REFUSED))
  })
  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error instanceof ProxyError) return sendProxyError(reply, error)
    const status = error.statusCode ?? 500
    if (status >= 500) {
      request.log.error({ err: error }, 'internal error')
      return sendProxyError(reply, new ProxyError('internal_error', 'internal error'))
    }
    // A 4xx Fastify raised keeps its meaning; one the table lacks is a bad request, never a 500.
    const code = (Object.keys(PROXY_ERRORS) as ProxyErrorCode[]).find((name) => PROXY_ERRORS[name] === status) ?? 'bad_request'
    return sendProxyError(reply, new ProxyError(code, error.message))
  })
  app.setNotFoundHandler((request, reply) => {
    if (!KNOWN_METHODS.has(request.method)) return sendProxyError(reply, new ProxyError('method_not_allowed', `${request.method} is not forwarded`))
    const hint = meant(request.raw.url ?? '')
    sendProxyError(reply, new ProxyError('not_found', `nothing is served at this path${hint === undefined ? '' : `; did you mean ${hint}?`}`))
  })
  return app
}

/** What `/-/ready` and `/-/metrics` read: the credential sets, and the route table serving now. */
interface View {
  readonly credentials: ReadonlyMap<string, TokenManager>
  readonly metrics: Metrics
  readonly table: () => RouteTable<ServedRoute>
}

/** The proxy's own endpoints under `/-/`: never forwarded, never holding a token. */
function ownEndpoints (app: FastifyInstance, { credentials, metrics, table }: View): void {
  app.get('/-/healthy', async () => ({ healthy: true }))
  // Ready when every credential set holds a valid token; otherwise which do not, and why (never a token).
  app.get('/-/ready', async (_request, reply) => {
    const routes = table().names()
    const sets = [...credentials].map(([name, tokens]) => ({ name, status: tokens.status(), reason: tokens.lastError() }))
    const waiting = sets.filter(({ status }) => !status.ready)
    if (waiting.length === 0) {
      const expiresAt = Math.min(...sets.map(({ status }) => status.expiresAt ?? 0))
      return { ready: true, tokenExpiresAt: new Date(expiresAt).toISOString(), routes }
    }
    const [first] = waiting
    return reply.code(503).send({
      ready: false,
      reason: first?.reason ?? 'the first token has not been obtained yet',
      ...(credentials.size > 1 ? { credentials: waiting.map(({ name, reason }) => ({ name, reason: reason ?? 'the first token has not been obtained yet' })) } : {}),
      routes
    })
  })
  app.get('/-/metrics', async (_request, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()))
  app.all('/-/*', async (_request, reply) => sendProxyError(reply, new ProxyError('not_found', 'the proxy has no such endpoint')))
}

/**
 * The app of one configuration: the guard, the proxy's own endpoints, one forwarding
 * route per upstream and the discovered clusters. It never listens: the listener
 * hands it requests while it is the generation serving.
 */
async function buildGeneration (config: Config, shared: Shared, routes: readonly ServedRoute[], clusters: readonly DiscoveredClusters[]): Promise<Generation> {
  const { log, metrics } = shared
  const table = new RouteTable(routes, clusterRootsOf(config))
  const app = createApp(log, (target) => table.meant(target))
  const guard = createGuard(config)
  app.addHook('onRequest', guardHook(guard))

  // Callback style: no promise per request; the log line is only built when it is written.
  const hinted = new Set<string>()
  const hintCluster = (target: string): void => {
    const hint = table.meant(target)
    if (hint === undefined || hinted.has(hint)) return
    hinted.add(hint)
    log.warn({ event: 'cluster_path_hint', meant: hint }, `the admin API answered 404 to a path that starts with a cluster's name; clusters are served at ${hint}`)
  }
  app.addHook('onResponse', (request, reply, done) => {
    // While shutting down, a keep-alive connection is closed as soon as its request is answered.
    if (shared.closing) setImmediate(() => shared.server?.closeIdleConnections())
    const upstream = request.upstreamName ?? request.routeOptions.config.upstream
    const elapsed = reply.elapsedTime
    metrics.observe(upstream ?? 'none', reply.statusCode, elapsed / 1000)
    // The admin API's 404 passes through unchanged; the hint goes to the log, once per cluster.
    if (reply.statusCode === 404 && upstream === 'admin') hintCluster(request.raw.url ?? '')
    // Probes and scrapes (the proxy's own endpoints) at debug: they come every few seconds.
    const level = upstream === undefined && request.raw.url?.startsWith('/-/') === true ? 'debug' : 'info'
    if (log.isLevelEnabled(level)) {
      const url = request.raw.url ?? ''
      const query = url.indexOf('?')
      // The root logger with the id as a field: no per-request child logger.
      log[level]({
        reqId: request.id,
        method: request.method,
        path: query === -1 ? url : url.slice(0, query),
        upstream,
        status: reply.statusCode,
        durationMs: Math.round(elapsed * 10) / 10
      }, 'request')
    }
    done()
  })

  ownEndpoints(app, { credentials: shared.credentials, metrics, table: () => table })

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
      await app.register(discoveredRoutes, { root, table, refresh: async () => await discovered.discovery.refreshIfStale(), timeout: config.timeout, log })
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

/**
 * The listening app: it owns the server (timeouts, malformed requests, CONNECT,
 * WebSocket upgrades, shutdown) and routes nothing itself; each request goes to the
 * generation `serving()` names at that instant.
 */
function buildListener (shared: Shared, serving: () => Generation): FastifyInstance {
  const app = createApp(shared.log, undefined, (_handler, options) => {
    const server = createServer(options.http ?? {}, (request, response) => { serving().app.routing(request, response) })
    // As Fastify sets up a server it makes itself.
    server.keepAliveTimeout = Number(options.keepAliveTimeout ?? 72_000)
    server.requestTimeout = Number(options.requestTimeout ?? 0)
    return server
  })
  shared.server = app.server
  const tunnels = websocketTunnel(app.server, {
    resolve: (request) => {
      const { guard, table } = serving()
      const verdict = guard(request)
      return verdict instanceof ProxyError ? verdict : table.resolve(request.url ?? '')
    },
    log: shared.log,
    timeout: serving().config.timeout
  })
  app.addHook('preClose', async () => {
    shared.closing = true
    tunnels.closeAll()
  })
  return app
}

/** The `ADMIN_ADDRESS` listener: only `/-/` (probes and Prometheus scrapes), no credentials used. */
export function buildAdminServer (log: Logger, view: View): FastifyInstance {
  const app = createApp(log)
  ownEndpoints(app, view)
  return app
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

export interface RunningProxy {
  readonly app: FastifyInstance
  readonly admin: FastifyInstance | undefined
  /** The first credential set's token manager (the only one without credential sets). */
  readonly tokens: TokenManager
  /** The credential sets configured now, by name. */
  readonly credentials: ReadonlyMap<string, TokenManager>
  /** The discovery of the configuration serving now, if it discovers clusters. */
  readonly discovery: ClusterDiscovery | undefined
  /**
   * A reload: the new configuration is built in full beside the running one, then
   * swapped in at once. Credential sets whose settings and secrets are unchanged keep
   * their tokens; changed ones drop theirs; removed ones are closed (their tokens
   * never used again); new ones fetch theirs. Requests already routed finish on the
   * routes they started on. Throws, changing nothing, when the new routes cannot be built.
   */
  readonly reconfigure: (next: Config) => Promise<ReloadSummary>
  /** `http://host:port`, or the socket path. */
  readonly address: string
  /** Stops accepting connections, lets in-flight requests finish, releases the upstream pools. */
  readonly close: () => Promise<void>
}

export interface StartOptions {
  /** Token back-off, for tests that cannot wait a second. */
  readonly backoffMs?: number
  /** Cluster discovery's timings (5 minutes, 30 s), for tests that cannot wait. */
  readonly discovery?: { readonly intervalMs?: number, readonly onDemandMs?: number }
}

/** Everything `serve` runs: dispatcher, token managers (first tokens requested at once), listeners, reloads. */
export async function startProxy (config: Config, log: Logger, options: StartOptions = {}): Promise<RunningProxy> {
  const dispatcher = createDispatcher(config, log)
  const managerFor = (name: string, settings: TokenSettings, of: Config): TokenManager =>
    new TokenManager(settings, { dispatcher, log: credentialsLog(log, name, of), backoffMs: options.backoffMs })
  // One token manager per credential set: a route's tokens come from its own set, and no other.
  const credentials = new Map([...config.credentialSets].map(([name, settings]) => [name, managerFor(name, settings, config)]))
  const [tokenSet, tokens] = [...credentials][0] as [string, TokenManager]
  const metrics = new Metrics(credentials)
  const shared: Shared = { log, dispatcher, metrics, credentials, closing: false, server: undefined }

  // Each route holds its own credential in its dispatcher; a route a reload keeps (same
  // name, prefix, upstream and set) is kept whole, with what its 401s taught it.
  let served = new Map<string, ServedRoute>()
  const serveAll = (of: Config, sets: ReadonlyMap<string, TokenManager>): { routes: ServedRoute[], keep: () => void } => {
    const next = new Map<string, ServedRoute>()
    const routes = routesOf(of).map((route) => {
      const key = JSON.stringify(route)
      const kept = served.get(key)
      const made = kept !== undefined && sets.get(route.credentials) === credentials.get(route.credentials)
        ? kept
        : serveRoute(route, dispatcher, sets.get(route.credentials) as TokenManager, log)
      next.set(key, made)
      return made
    })
    return { routes, keep: () => { served = next } }
  }
  /**
   * The discoveries a configuration runs: the top level's, and each route's. One that
   * asks the same control plane with the same set, for the same root, keeps running.
   */
  const clustersFor = (of: Config, sets: ReadonlyMap<string, TokenManager>, running: readonly DiscoveredClusters[]): DiscoveredClusters[] => {
    const [defaultSet] = [...sets.keys()] as [string]
    const wanted = [
      ...(of.discoverClusters && of.upstream !== undefined ? [{ root: CLUSTERS_PREFIX, controlPlane: of.upstream, credentials: defaultSet, route: undefined }] : []),
      ...of.prefixRoutes.filter((route) => route.discoverClusters).map((route) => ({ root: clusterRoot(route.prefix), controlPlane: route.upstream, credentials: route.credentials, route: route.name }))
    ]
    return wanted.map(({ root, controlPlane, credentials: name, route }) => {
      const manager = sets.get(name) as TokenManager
      const kept = running.find((feed) => feed.serves(root, controlPlane, manager))
      if (kept !== undefined) return kept
      const discovery = new ClusterDiscovery({ controlPlane, tokens: manager, dispatcher, log, timeout: of.timeout, ...options.discovery })
      return new DiscoveredClusters(discovery, { root, controlPlane, tokens: manager }, (cluster, upstream) =>
        serveRoute({ name: route === undefined ? cluster : `${route}/${cluster}`, prefix: `${root}${cluster}`, upstream, credentials: name }, dispatcher, manager, log))
    })
  }

  const first = serveAll(config, credentials)
  first.keep()
  let current = await buildGeneration(config, shared, first.routes, clustersFor(config, credentials, []))
  const app = buildListener(shared, () => current)
  const view: View = { credentials, metrics, table: () => current.table }
  const admin = config.adminAddress === undefined ? undefined : buildAdminServer(log, view)
  // Fastify logs "Server listening at …" for each address; the proxy's own line below says it once, with the routes.
  const level = log.level
  if (log.isLevelEnabled('info')) log.level = 'warn'
  try {
    if (config.socket === undefined) {
      await app.listen({ host: config.host, port: config.port })
    } else {
      await listenOnSocket(app, config.socket)
    }
    if (admin !== undefined && config.adminAddress !== undefined) await admin.listen(config.adminAddress)
  } catch (error) {
    await Promise.all([app.close(), admin?.close(), current.app.close()])
    await dispatcher.close()
    throw listenProblem(error, config) ?? error
  } finally {
    log.level = level
  }
  const address = addressOf(app, config.socket)
  const routes = routesOf(config).map((route) => `${route.prefix} -> ${displayUrl(route.upstream)}`)
  let closing: Promise<void> | undefined
  log.info({
    event: 'listening',
    address,
    admin: admin === undefined ? undefined : addressOf(admin, undefined),
    routes,
    clusters: current.clusters.length === 0 ? undefined : current.clusters.map((feed) => `${feed.root} discovered from ${displayUrl(feed.controlPlane)}`)
  }, `listening on ${address}${admin === undefined ? '' : ` (probes and metrics on ${addressOf(admin, undefined)})`}`)
  // Before the ready line: when it is read, the token file is there.
  let removeTokenFile = config.tokenFile === undefined ? undefined : tokenFileSink(tokens, config.tokenFile, log)
  const announceReady = ({ result }: { result: string }): void => {
    if (result !== 'success') return
    tokens.off('fetch', announceReady)
    log.info({ event: 'ready', address }, `ready: the first token is held; forwarding ${routes.join(', ')}`)
  }
  tokens.on('fetch', announceReady)
  // Only once the proxy can be reached: a listener that fails costs no token request.
  for (const feed of current.clusters) feed.discovery.start()
  for (const manager of credentials.values()) manager.start()

  const prints = new Map([...config.credentialSets].map(([name, settings]) => [name, fingerprintOf(settings)]))
  const reconfigure = async (next: Config): Promise<ReloadSummary> => {
    const restart = changedSettings(config, next, RESTART)
    const sets = diff([...prints.keys()], [...next.credentialSets.keys()], (name) => fingerprintOf(next.credentialSets.get(name) as TokenSettings) !== prints.get(name))
    // The new sets' managers, made but not started until the new routes serve.
    const nextSets = new Map([...next.credentialSets.keys()].map((name) => [name, credentials.get(name) ?? managerFor(name, next.credentialSets.get(name) as TokenSettings, next)]))
    const nextRoutes = serveAll(next, nextSets)
    const clusters = clustersFor(next, nextSets, current.clusters)
    let generation: Generation
    try {
      generation = await buildGeneration(next, shared, nextRoutes.routes, clusters)
    } catch (error) {
      for (const feed of clusters) if (!current.clusters.includes(feed)) feed.discovery.close()
      throw error
    }
    // The swap: from here to the end, nothing awaits.
    const previous = current
    current = generation
    nextRoutes.keep()
    for (const feed of previous.clusters) {
      feed.detach(previous.table)
      if (!generation.clusters.includes(feed)) feed.discovery.close()
    }
    for (const name of sets.removed) {
      const manager = credentials.get(name) as TokenManager
      manager.close()
      metrics.forget(name, manager)
      credentials.delete(name)
      prints.delete(name)
      if (name === tokenSet && removeTokenFile !== undefined) {
        removeTokenFile()
        removeTokenFile = undefined
        restart.push('tokenFile (its credential set was removed)')
      }
    }
    for (const name of sets.changed) {
      const settings = next.credentialSets.get(name) as TokenSettings
      credentials.get(name)?.reconfigure(settings)
      prints.set(name, fingerprintOf(settings))
    }
    for (const name of sets.added) {
      const manager = nextSets.get(name) as TokenManager
      const settings = next.credentialSets.get(name) as TokenSettings
      credentials.set(name, manager)
      prints.set(name, fingerprintOf(settings))
      metrics.count(name, manager)
      manager.start()
    }
    for (const feed of generation.clusters) if (!previous.clusters.includes(feed)) feed.discovery.start()
    const [before, after] = [routesByName(previous.config), routesByName(next)]
    const routeChanges = diff([...before.keys()], [...after.keys()], (name) => before.get(name) !== after.get(name))
    return { sets, routes: routeChanges, settings: changedSettings(previous, generation, APPLIED), needsRestart: restart }
  }
  return {
    app,
    admin,
    tokens,
    credentials,
    get discovery () { return current.clusters[0]?.discovery },
    reconfigure,
    address,
    // Once, however often it is called (a second signal, a test's teardown).
    close: () => {
      closing ??= (async () => {
        removeTokenFile?.()
        for (const feed of current.clusters) feed.discovery.close()
        await Promise.all([app.close(), admin?.close(), current.app.close()])
        for (const manager of credentials.values()) manager.close()
        await dispatcher.close()
      })()
      return closing
    }
  }
}

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
    try {
      shapes[key] = createHash('sha256').update(readSecret(value as SecretSource).reveal()).digest('hex')
    } catch {
      shapes[key] = 'unreadable'
    }
  }
  return shapes
}

/** Token lines name their credential set when there are several. */
function credentialsLog (log: Logger, name: string, config: Config): Logger {
  // `set`, not `credentials`: a field named like a credential is redacted.
  return config.credentialSets.size > 1 ? log.child({ set: name }) : log
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
  readonly #tables = new Set<RouteTable<ServedRoute>>()
  #served = new Map<string, ServedRoute>()
  #entries: ReadonlyArray<{ readonly route: ServedRoute, readonly uuid: string }> | undefined

  constructor (discovery: ClusterDiscovery, where: { root: string, controlPlane: URL, tokens: TokenManager }, serve: (name: string, upstream: URL) => ServedRoute) {
    this.discovery = discovery
    this.root = where.root
    this.controlPlane = where.controlPlane
    this.#tokens = where.tokens
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

  /** Whether this is the discovery of `root` from `controlPlane` with `tokens`. */
  serves (root: string, controlPlane: URL, tokens: TokenManager): boolean {
    return this.root === root && this.controlPlane.href === controlPlane.href && this.#tokens === tokens
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

/** A listener that cannot be bound, in the user's words: which address, and the setting that moves it. */
export class ListenError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'ListenError'
  }
}

function listenProblem (error: unknown, config: Config): ListenError | undefined {
  const { code, address, port } = error as NodeJS.ErrnoException & { address?: string, port?: number }
  const reasons: Record<string, string> = { EADDRINUSE: 'the address is already in use', EACCES: 'permission denied', EADDRNOTAVAIL: 'no such address on this machine' }
  const reason = reasons[code ?? '']
  if (reason === undefined) return undefined
  const admin = config.adminAddress !== undefined && port === config.adminAddress.port && port !== config.port
  const where = config.socket !== undefined && !admin ? config.socket : `${address ?? config.host}:${String(port ?? config.port)}`
  const setting = admin ? 'BEARER_PROXY_ADMIN_ADDRESS' : config.socket !== undefined ? 'BEARER_PROXY_SOCKET' : 'BEARER_PROXY_PORT (or BEARER_PROXY_HOST)'
  return new ListenError(`cannot listen on ${where}: ${reason}; choose another with ${setting}`)
}

function addressOf (app: FastifyInstance, socket: string | undefined): string {
  const bound = app.server.address()
  return typeof bound === 'object' && bound !== null
    ? `http://${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`
    : socket as string
}

/** A unix socket that only this user can use: created under umask 177, a stale one replaced. */
async function listenOnSocket (app: FastifyInstance, path: string): Promise<void> {
  try {
    if (statSync(path).isSocket()) rmSync(path)
  } catch {}
  const previous = process.umask(0o177)
  try {
    await app.listen({ path })
  } finally {
    process.umask(previous)
  }
  chmodSync(path, 0o600)
}
