import { chmodSync, rmSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { createApp, ownEndpoints, type View } from './app.js'
import type { Config } from './config.js'
import type { ClusterDiscovery } from './cluster-discovery.js'
import { displayUrl, ProxyError } from './errors.js'
import { LiveConfiguration, type LiveConfigurationOptions, type Generation, type ReloadSummary, type ProxyContext } from './generation.js'
import { createDispatcher } from './outbound.js'
import { defaultSet, routesOf } from './routes.js'
import { prepareTokenFile, tokenFileSink } from './token/file.js'
import type { TokenManager } from './token/manager.js'
import { connectionRefused } from './guard.js'
import type { Tracing } from './tracing.js'
import { CLOSED, websocketTunnel } from './websocket.js'

export type { Changes, ReloadSummary } from './generation.js'

/**
 * The listening app: it owns the server (timeouts, malformed requests, CONNECT,
 * WebSocket upgrades, shutdown) and routes nothing itself; each request goes to the
 * generation `serving()` names at that instant.
 */
function buildListener (shared: ProxyContext, serving: () => Generation): FastifyInstance {
  const { tracing } = shared
  const app = createApp(shared.log, undefined, (_handler, options) => {
    const server = createServer(options.http ?? {}, (request, response) => {
      // Behind a refusal on the same connection: never answered or forwarded (the connection closes after the refusal).
      if (connectionRefused(request.socket)) return
      tracing?.serve(request, response)
      serving().app.routing(request, response)
    })
    // As Fastify sets up a server it makes itself.
    server.keepAliveTimeout = Number(options.keepAliveTimeout ?? 72_000)
    server.requestTimeout = Number(options.requestTimeout ?? 0)
    return server
  })
  shared.server = app.server
  const tunnels = websocketTunnel(app.server, {
    resolve: (request) => {
      if (connectionRefused(request.socket)) return CLOSED
      const { guard, table } = serving()
      const verdict = guard(request)
      return verdict instanceof ProxyError ? verdict : table.resolve(request.url ?? '')
    },
    log: shared.log,
    timeout: serving().config.timeout,
    tracing
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

export interface RunningProxy {
  readonly app: FastifyInstance
  readonly admin: FastifyInstance | undefined
  /** The first credential set's token manager (the only one without credential sets). */
  readonly tokens: TokenManager
  /** The credential sets configured now, by name. */
  readonly setTokens: ReadonlyMap<string, TokenManager>
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

export interface StartOptions extends LiveConfigurationOptions {
  /** Traces, when the `OTEL_*` variables ask for them. */
  readonly tracing?: Tracing | undefined
}

/** Everything `serve` runs: dispatcher, token managers (first tokens requested at once), listeners, reloads. */
export async function startProxy (config: Config, log: Logger, options: StartOptions = {}): Promise<RunningProxy> {
  if (config.tokenFile !== undefined) prepareTokenFile(config.tokenFile)
  const dispatcher = createDispatcher(config, log)
  const configurations = await LiveConfiguration.build(config, { log, dispatcher, tracing: options.tracing }, options)
  const { shared, tokens } = configurations
  const app = buildListener(shared, () => configurations.current)
  const admin = config.adminAddress === undefined
    ? undefined
    : buildAdminServer(log, { setTokens: shared.setTokens, metrics: shared.metrics, table: () => configurations.current.table })
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
    await Promise.all([app.close(), admin?.close(), configurations.close()])
    await dispatcher.close()
    throw listenProblem(error, config) ?? error
  } finally {
    log.level = level
  }
  const address = addressOf(app, config.socket)
  const routes = routesOf(config).map((route) => `${route.prefix} -> ${displayUrl(route.upstream)}`)
  const { clusters } = configurations.current
  log.info({
    event: 'listening',
    address,
    admin: admin === undefined ? undefined : addressOf(admin, undefined),
    routes,
    clusters: clusters.length === 0 ? undefined : clusters.map((feed) => `${feed.root} discovered from ${displayUrl(feed.controlPlane)}`)
  }, `listening on ${address}${admin === undefined ? '' : ` (probes and metrics on ${addressOf(admin, undefined)})`}`)
  // Before the ready line: when it is read, the token file is there.
  let removeTokenFile = config.tokenFile === undefined ? undefined : tokenFileSink(tokens, config.tokenFile, log)
  const tokenSet = defaultSet(config)
  // The ready line when /-/ready would answer 200: every credential set holds its token. Until then, each set's
  // first token names the sets still waiting for theirs.
  const started = [...shared.setTokens.values()]
  const announceReady = ({ result }: { result: string }): void => {
    if (result !== 'success') return
    const waiting = [...shared.setTokens].filter(([, manager]) => manager.current() === undefined).map(([name]) => name)
    if (waiting.length > 0) {
      log.info({ event: 'waiting', sets: waiting }, `not ready yet: credential ${waiting.length === 1 ? 'set' : 'sets'} ${waiting.join(', ')} ${waiting.length === 1 ? 'has' : 'have'} no token yet`)
      return
    }
    for (const manager of started) manager.off('fetch', announceReady)
    log.info({ event: 'ready', address }, `ready: ${shared.setTokens.size > 1 ? 'every credential set holds its token' : 'the first token is held'}; forwarding ${routes.join(', ')}`)
  }
  for (const manager of started) manager.on('fetch', announceReady)
  configurations.start()

  let closing: Promise<void> | undefined
  return {
    app,
    admin,
    tokens,
    setTokens: shared.setTokens,
    get discovery () { return configurations.current.clusters[0]?.discovery },
    reconfigure: async (next) => {
      const summary = await configurations.reconfigure(next)
      // The token file holds the first set's token: with that set gone, it goes too.
      if (summary.sets.removed.includes(tokenSet) && removeTokenFile !== undefined) {
        removeTokenFile()
        removeTokenFile = undefined
        summary.needsRestart.push('tokenFile (its credential set was removed)')
      }
      return summary
    },
    address,
    // Once, however often it is called (a second signal, a test's teardown).
    close: () => {
      closing ??= (async () => {
        removeTokenFile?.()
        await Promise.all([app.close(), admin?.close(), configurations.close()])
        await dispatcher.close()
      })()
      return closing
    }
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
