import { createHash, randomUUID } from 'node:crypto'
import { chmodSync, rmSync, statSync } from 'node:fs'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import { type Config, fingerprintOf } from './config.js'
import { readSecret } from './secret.js'
import { createDispatcher } from './outbound.js'
import { RequestLogger } from './log.js'
import { displayUrl, PROXY_ERRORS, ProxyError, type ProxyErrorCode, rawErrorResponse, sendProxyError } from './errors.js'
import { createGuard, guardHook } from './guard.js'
import { Metrics } from './metrics.js'
import { discoveredRoutes, proxyRoutes, type ServedRoute, serveRoute } from './proxy.js'
import { ClusterDiscovery, type DiscoveredCluster } from './discovery.js'
import { CLUSTERS_PREFIX, RouteTable, routesOf } from './routes.js'
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

export interface ServerParts {
  readonly config: Config
  /** One token manager per credential set, by name. */
  readonly credentials: ReadonlyMap<string, TokenManager>
  readonly metrics: Metrics
  readonly dispatcher: Dispatcher
  readonly log: Logger
  /** Every route, configured or discovered. */
  readonly table: RouteTable<ServedRoute>
  /** The clusters of a Run:ai control plane, when they are discovered rather than configured. */
  readonly discovery: ClusterDiscovery | undefined
}

const KNOWN_METHODS = new Set(['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS'])

/** A Fastify instance with what both listeners share: logging, error bodies, CONNECT refused. */
function createApp (log: Logger, meant: (target: string) => string | undefined = () => undefined): FastifyInstance {
  const app = Fastify({
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

/** The proxy's own endpoints under `/-/`: never forwarded, never holding a token. */
function ownEndpoints (app: FastifyInstance, { credentials, metrics, table }: Pick<ServerParts, 'credentials' | 'metrics' | 'table'>): void {
  app.get('/-/healthy', async () => ({ healthy: true }))
  // Ready when every credential set holds a valid token; otherwise which do not, and why (never a token).
  app.get('/-/ready', async (_request, reply) => {
    const routes = table.names()
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

/** Assembles the proxy: the guard, its own `/-/` endpoints, and one forwarding route per upstream. */
export async function buildServer (parts: ServerParts): Promise<FastifyInstance> {
  const { config, metrics, table, discovery } = parts
  const app = createApp(parts.log, (target) => table.meant(target))
  const guard = createGuard(config)
  app.addHook('onRequest', guardHook(guard))

  // While shutting down, a keep-alive connection is closed as soon as its request is answered.
  let closing = false
  app.addHook('preClose', async () => { closing = true })

  // Callback style: no promise per request; the log line is only built when it is written.
  const log = parts.log
  const hinted = new Set<string>()
  const hintCluster = (target: string): void => {
    const hint = table.meant(target)
    if (hint === undefined || hinted.has(hint)) return
    hinted.add(hint)
    log.warn({ event: 'cluster_path_hint', meant: hint }, `the admin API answered 404 to a path that starts with a cluster's name; clusters are served at ${hint}`)
  }
  app.addHook('onResponse', (request, reply, done) => {
    if (closing) setImmediate(() => app.server.closeIdleConnections())
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

  ownEndpoints(app, parts)

  app.decorateRequest('upstreamName', undefined)
  if (discovery === undefined) {
    // A cluster that is not configured must never fall through to the admin API.
    app.all(`${CLUSTERS_PREFIX}*`, async (request, reply) => {
      const resolved = table.resolve(request.raw.url ?? '')
      sendProxyError(reply, resolved instanceof ProxyError ? resolved : table.unknownCluster(''))
    })
  } else {
    // Clusters that come and go: one route resolves them in the table at each request.
    await app.register(discoveredRoutes, { table, refresh: async () => await discovery.refreshIfStale(), timeout: config.timeout, log: parts.log })
  }

  const tunnels = websocketTunnel(app.server, { table, guard, log: parts.log, timeout: config.timeout })
  app.addHook('preClose', async () => { tunnels.closeAll() })
  await app.register(proxyRoutes, { routes: table.routes, timeout: config.timeout, log: parts.log })
  return app
}

/** The `ADMIN_ADDRESS` listener: only `/-/` (probes and Prometheus scrapes), no credentials used. */
export function buildAdminServer (parts: Pick<ServerParts, 'credentials' | 'metrics' | 'log' | 'table'>): FastifyInstance {
  const app = createApp(parts.log)
  ownEndpoints(app, parts)
  return app
}

export interface RunningProxy {
  readonly app: FastifyInstance
  readonly admin: FastifyInstance | undefined
  /** The first credential set's token manager (the only one without credential sets). */
  readonly tokens: TokenManager
  readonly credentials: ReadonlyMap<string, TokenManager>
  readonly discovery: ClusterDiscovery | undefined
  /**
   * A reload: credential sets whose settings or secrets changed get new settings (their
   * tokens dropped, new ones requested); what cannot change in a running proxy is
   * named in `restart`, and left as it was.
   */
  readonly reconfigure: (next: Config) => { readonly changed: string[], readonly restart: string[] }
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

/** Everything `serve` runs: dispatcher, token manager (first token requested at once), servers, listeners. */
export async function startProxy (config: Config, log: Logger, options: StartOptions = {}): Promise<RunningProxy> {
  const dispatcher = createDispatcher(config, log)
  // One token manager per credential set: a route's tokens come from its own set, and no other.
  const credentials = new Map([...config.credentialSets].map(([name, settings]) => [name, new TokenManager(settings, { dispatcher, log: credentialsLog(log, name, config), backoffMs: options.backoffMs })]))
  const [defaultSet, tokens] = [...credentials][0] as [string, TokenManager]
  const metrics = new Metrics(credentials)
  // Each route holds its own credential in its dispatcher.
  const table = new RouteTable(routesOf(config).map((route) => serveRoute(route, dispatcher, credentials.get(route.credentials) as TokenManager, log)))
  const discovery = config.discoverClusters && config.upstream !== undefined
    ? discoverInto(table, new ClusterDiscovery({ controlPlane: config.upstream, tokens, dispatcher, log, timeout: config.timeout, ...options.discovery }), { dispatcher, tokens, log, credentials: defaultSet })
    : undefined
  const app = await buildServer({ config, credentials, metrics, dispatcher, log, table, discovery })
  const admin = config.adminAddress === undefined ? undefined : buildAdminServer({ credentials, metrics, log, table })
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
    await Promise.all([app.close(), admin?.close()])
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
    clusters: discovery === undefined ? undefined : `discovered from ${displayUrl(config.upstream as URL)}`
  }, `listening on ${address}${admin === undefined ? '' : ` (probes and metrics on ${addressOf(admin, undefined)})`}`)
  // Before the ready line: when it is read, the token file is there.
  const removeTokenFile = config.tokenFile === undefined ? undefined : tokenFileSink(tokens, config.tokenFile, log)
  const announceReady = ({ result }: { result: string }): void => {
    if (result !== 'success') return
    tokens.off('fetch', announceReady)
    log.info({ event: 'ready', address }, `ready: the first token is held; forwarding ${routes.join(', ')}`)
  }
  tokens.on('fetch', announceReady)
  // Only once the proxy can be reached: a listener that fails costs no token request.
  discovery?.start()
  for (const manager of credentials.values()) manager.start()
  const prints = new Map([...config.credentialSets].map(([name, settings]) => [name, fingerprintOf(settings)]))
  const reconfigure = (next: Config): { changed: string[], restart: string[] } => {
    const restart = needsRestart(config, next)
    if ([...next.credentialSets.keys()].join() !== [...config.credentialSets.keys()].join()) restart.push('credentials (sets added or removed)')
    const changed: string[] = []
    for (const [name, settings] of next.credentialSets) {
      const manager = credentials.get(name)
      const print = fingerprintOf(settings)
      if (manager === undefined || print === prints.get(name)) continue
      prints.set(name, print)
      manager.reconfigure(settings)
      changed.push(name)
    }
    return { changed, restart }
  }
  return {
    app,
    admin,
    tokens,
    credentials,
    reconfigure,
    discovery,
    address,
    // Once, however often it is called (a second signal, a test's teardown).
    close: () => {
      closing ??= (async () => {
        removeTokenFile?.()
        discovery?.close()
        for (const manager of credentials.values()) manager.close()
        await Promise.all([app.close(), admin?.close()])
        await dispatcher.close()
      })()
      return closing
    }
  }
}

/** The settings a running proxy cannot take on without a restart, by name, where `next` differs from `running`. */
function needsRestart (running: Config, next: Config): string[] {
  const shape = (config: Config): Record<string, string> => ({
    listener: JSON.stringify([config.host, config.port, config.socket, config.adminAddress]),
    routes: JSON.stringify(routesOf(config)),
    clusters: JSON.stringify([config.discoverClusters, [...config.clusters]]),
    policy: JSON.stringify([config.readOnly, config.allowPaths, config.denyPaths, config.allowedHosts, config.allowedOrigins, config.allowAnonymous]),
    inboundKey: config.inboundKey === undefined ? '' : createHash('sha256').update(readSecret(config.inboundKey).reveal()).digest('hex'),
    tls: JSON.stringify([config.caFile, config.insecureSkipVerify, config.timeout]),
    logs: JSON.stringify([config.logLevel, config.logFormat, config.tokenFile])
  })
  const [before, after] = [shape(running), shape(next)]
  return Object.keys(before).filter((key) => before[key] !== after[key])
}

/** Token lines name their credential set when there are several. */
function credentialsLog (log: Logger, name: string, config: Config): Logger {
  // `set`, not `credentials`: a field named like a credential is redacted.
  return config.credentialSets.size > 1 ? log.child({ set: name }) : log
}

/**
 * Keeps the table's clusters those the discovery lists; a cluster whose URL did not
 * change keeps its route (and what its 401s taught it).
 */
function discoverInto (table: RouteTable<ServedRoute>, discovery: ClusterDiscovery, parts: { dispatcher: Dispatcher, tokens: TokenManager, log: Logger, credentials: string }): ClusterDiscovery {
  let served = new Map<string, ServedRoute>()
  discovery.on('change', (clusters: readonly DiscoveredCluster[]) => {
    const next = new Map<string, ServedRoute>()
    const entries = clusters.map(({ name, uuid, url }) => {
      const kept = served.get(name)
      const route = kept !== undefined && kept.upstream.href === url.href
        ? kept
        : serveRoute({ name, prefix: `${CLUSTERS_PREFIX}${name}`, upstream: url, credentials: parts.credentials }, parts.dispatcher, parts.tokens, parts.log)
      next.set(name, route)
      return { route, uuid }
    })
    served = next
    table.replaceClusters(entries)
  })
  return discovery
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
