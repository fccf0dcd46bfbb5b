import { existsSync, rmSync, type Stats, unwatchFile, watchFile } from 'node:fs'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import type { Arguments } from './arguments.js'
import { type Config, loadConfig } from './config.js'
import { ConfigError, type LoadOptions, refused } from './config/read.js'
import { joinPath } from './url.js'
import { displayUrl } from './errors.js'
import { filesOf } from './oauth/settings.js'
import { clusterSources, CLUSTERS_PREFIX, defaultSet, routesOf } from './routes.js'
import { createLogger } from './log.js'
import { packageVersion } from './package-root.js'
import { PrivacyError } from './private-file.js'
import { didYouMean } from './suggest.js'
import { printable } from './terminal.js'
import type { Changes, ReloadSummary, RunningProxy } from './server.js'
import type { Tracing } from './tracing.js'

/** The commands, each loading what it needs only when it runs. */
export async function run (args: Arguments): Promise<number> {
  // `login` stores a login: the grant is that, whatever the configuration uses until it exists.
  const flags = args.command === 'login' || args.command === 'logout' ? { GRANT: 'login', ...args.flags } : args.flags
  const options: LoadOptions = { envFile: args.envFile, configFile: args.configFile, flags, forwarding: args.command === 'serve' }
  // The CLI runs health.ts itself, without this module's settings check; here too for any other caller.
  if (args.command === 'health') return await (await import('./health.js')).run(args)
  try {
    const config = loadConfig(options)
    switch (args.command) {
      case 'serve': return await serve(config, options)
      case 'check': return await check(withCredentials(config, args.credentials))
      case 'token': return await token(withCredentials(config, args.credentials))
      case 'clusters': return await clusters(config)
      case 'login': return await login(withCredentials(config, args.credentials), args.device)
      case 'logout': return await logout(withCredentials(config, args.credentials))
    }
  } catch (error) {
    return refused(error)
  }
}

const SHUTDOWN_GRACE_MS = 10_000
/** How long, after the last request, the spans not yet sent may take to reach the collector. */
const TRACES_FLUSH_MS = 3000
/** V8's full collection, when node runs with --expose-gc (the shebang's and `npm start`'s flags). */
const collectGarbage = (globalThis as { gc?: () => void }).gc

/** The configuration seen through one credential set: `--credentials NAME`, or the only one; its routes only. */
function withCredentials (config: Config, name: string | undefined): Config {
  const names = [...config.credentialSets.keys()]
  const chosen = name ?? (names.length === 1 ? names[0] : undefined)
  const token = chosen === undefined ? undefined : config.credentialSets.get(chosen)
  if (token === undefined) {
    throw new ConfigError([name === undefined
      ? `several credential sets (${names.join(', ')}): choose one with --credentials NAME`
      : `--credentials ${name}: no such credential set (${names.join(', ')})${didYouMean(name, names)}`])
  }
  return { ...config, tokenSettings: token, prefixRoutes: config.prefixRoutes.filter((route) => route.set === chosen) }
}

async function serve (config: Config, options: LoadOptions): Promise<number> {
  const { ListenError, startProxy } = await import('./server.js')
  const { startTracing, tracingSettings, TracingError } = await import('./tracing.js')
  const log = createLogger(config.logLevel ?? 'info', 1, config.logFormat)
  let proxy: Awaited<ReturnType<typeof startProxy>>
  let tracing: Tracing | undefined
  try {
    const traces = tracingSettings(process.env)
    if (traces !== undefined) {
      tracing = await startTracing(traces, log, packageVersion())
      log.info({ event: 'tracing', endpoint: displayUrl(traces.endpoint), protocol: traces.protocol, sampler: traces.sampler },
        `traces are sent to ${displayUrl(traces.endpoint)} (${traces.protocol}, sampler ${traces.sampler})`)
    }
    proxy = await startProxy(config, log, { tracing })
  } catch (error) {
    if (!(error instanceof ListenError) && !(error instanceof PrivacyError) && !(error instanceof TracingError)) throw error
    log.flush()
    process.stderr.write(`bearer-proxy: ${error.message}\n`)
    return 2
  }
  const unwatch = watchForReload(config, options, proxy.reconfigure, log)
  let stopping = false
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now')
      if (config.tokenFile !== undefined) rmSync(config.tokenFile, { force: true })
      process.exit(1)
    }
    stopping = true
    unwatch()
    log.info({ signal }, 'shutting down: no new connections; in-flight requests get up to 10 s')
    setTimeout(() => {
      log.warn('in-flight requests did not finish within 10 s; exiting')
      process.exit(0)
    }, SHUTDOWN_GRACE_MS).unref()
    // The spans of the last requests are sent before the process ends, within the grace left.
    proxy.close().then(async () => await tracing?.close(TRACES_FLUSH_MS)).finally(() => {
      log.info('stopped')
      log.flush()
      process.exit(0)
    })
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  return await new Promise<number>(() => {})
}

/** How often watched files are looked at, and how long a burst of changes is let settle before one reload. */
const WATCH_INTERVAL_MS = 1000
const RELOAD_DEBOUNCE_MS = 300

/**
 * Reload on SIGHUP, and when the configuration file, the env file or a credential
 * set's secret file changes (polled: a Kubernetes Secret is replaced by a symlink
 * swap that file events miss). A configuration with problems is logged, and the
 * running one kept untouched. Returns the function that stops watching.
 */
function watchForReload (config: Config, options: LoadOptions, reconfigure: RunningProxy['reconfigure'], log: Logger): () => void {
  const refuse = (cause: string, problems: readonly string[]): void => {
    for (const problem of problems) log.warn({ event: 'reload_refused', cause, problem }, `reload refused: ${problem}`)
    log.warn({ event: 'reload_refused', cause }, 'the new configuration has problems; the running one is kept')
  }
  const reload = async (cause: string): Promise<void> => {
    let next: Config
    try {
      next = loadConfig(options)
    } catch (error) {
      refuse(cause, error instanceof ConfigError ? error.problems : [(error as Error).message])
      return
    }
    let summary: ReloadSummary
    try {
      summary = await reconfigure(next)
    } catch (error) {
      refuse(cause, [`the new routes could not be set up: ${(error as Error).message}`])
      return
    }
    watch(next)
    log.info({ event: 'reloaded', cause, ...summary }, `reloaded (${cause}): ${describeReload(summary)}`)
    // The generation just replaced is garbage now, all of it: collected at once (the shebang's --expose-gc),
    // instead of when V8 gets round to it, so that reloads in a row do not pile up generations (README: Reload).
    collectGarbage?.()
  }
  // One reload at a time, in the order asked: each reads the files as they are when it starts.
  let reloading = Promise.resolve()
  const queue = (cause: string): void => { reloading = reloading.then(async () => { await reload(cause) }) }
  let timer: NodeJS.Timeout | undefined
  const soon = (cause: string): void => {
    clearTimeout(timer)
    timer = setTimeout(() => { queue(cause) }, RELOAD_DEBOUNCE_MS)
  }
  const onSignal = (): void => { queue('SIGHUP') }
  process.on('SIGHUP', onSignal)
  const listener = (path: string) => (current: Stats, previous: Stats): void => {
    if (current.mtimeMs !== previous.mtimeMs || current.ino !== previous.ino || current.size !== previous.size) soon(`${path} changed`)
  }
  // The configuration's own files, the inbound key's, and the secret and key files of the sets configured now (a reload can add some).
  const watched = new Map<string, ReturnType<typeof listener>>()
  const watch = (of: Config): void => {
    const files = new Set<string>()
    if (options.configFile !== undefined) files.add(options.configFile)
    if (options.envFile !== undefined) files.add(options.envFile)
    // ./.env, read when neither --env-file nor --config is given, is the configuration file then.
    else if (options.configFile === undefined && existsSync('.env')) files.add('.env')
    for (const settings of of.credentialSets.values()) for (const file of filesOf(settings)) files.add(file)
    if (of.inboundKey?.kind === 'file') files.add(of.inboundKey.path)
    for (const [path, onChange] of watched) {
      if (files.has(path)) continue
      unwatchFile(path, onChange)
      watched.delete(path)
    }
    for (const path of files) {
      if (watched.has(path)) continue
      const onChange = listener(path)
      watchFile(path, { interval: WATCH_INTERVAL_MS, persistent: false }, onChange)
      watched.set(path, onChange)
    }
  }
  watch(config)
  return () => {
    clearTimeout(timer)
    process.off('SIGHUP', onSignal)
    for (const [path, onChange] of watched) unwatchFile(path, onChange)
  }
}

/** A reload in one line, by name only. */
function describeReload ({ sets, routes, settings, needsRestart }: ReloadSummary): string {
  const parts: string[] = []
  const named = (what: string, changes: Changes): void => {
    for (const verb of ['added', 'changed', 'removed'] as const) {
      if (changes[verb].length > 0) parts.push(`${what} ${verb}: ${changes[verb].join(', ')}`)
    }
  }
  named('credential sets', sets)
  named('routes', routes)
  if (settings.length > 0) parts.push(`settings changed: ${settings.join(', ')}`)
  const done = parts.length === 0 ? 'nothing changed' : parts.join('; ')
  return needsRestart.length === 0 ? done : `${done}; ${needsRestart.join(', ')} changed too, which takes a restart`
}

/** `login`: the browser login (or, with `--device`, a code entered elsewhere), its refresh token stored for `serve`, `check` and `token`. */
async function login (config: Config, device: boolean): Promise<number> {
  const [{ LoginError, loginWithBrowser, loginWithDevice, openBrowser }, { createDispatcher }] = await Promise.all([import('./login/flow.js'), import('./outbound.js')])
  const dispatcher = createDispatcher(config, createLogger(config.logLevel ?? 'silent', 2, config.logFormat))
  // What reaches the terminal passes `printable` last, whatever part of it came from the provider.
  const say = (line: string): void => { process.stderr.write(`${printable(line)}\n`) }
  try {
    const { subject } = await (device ? loginWithDevice : loginWithBrowser)(config, dispatcher, { say, open: openBrowser })
    const { credentials } = config.tokenSettings
    say(`Logged in${subject === undefined ? '' : ` as ${subject}`}. The login is kept in ${credentials.grant === 'login' ? credentials.login.store : 'the token store'}; bearer-proxy serve, check and token use it now.`)
    return 0
  } catch (error) {
    say(`bearer-proxy: ${error instanceof LoginError || error instanceof PrivacyError ? error.message : `the login failed: ${(error as Error).message}`}`)
    return 1
  } finally {
    await dispatcher.close()
  }
}

/** `logout`: the stored login revoked at the provider (when it can be) and deleted. */
async function logout (config: Config): Promise<number> {
  const [{ LoginError, logout: forget }, { createDispatcher }] = await Promise.all([import('./login/flow.js'), import('./outbound.js')])
  const dispatcher = createDispatcher(config, createLogger(config.logLevel ?? 'silent', 2, config.logFormat))
  try {
    process.stderr.write(`${printable(await forget(config, dispatcher))}\n`)
    return 0
  } catch (error) {
    if (!(error instanceof LoginError) && !(error instanceof PrivacyError)) throw error
    process.stderr.write(`bearer-proxy: ${printable(error.message)}\n`)
    return 1
  } finally {
    await dispatcher.close()
  }
}

/** A token manager and its dispatcher for one command; log lines (on stderr) only when `LOG_LEVEL` asks for them. */
async function withCredentialSet<T> (config: Config, work: (tokens: import('./token/manager.js').TokenManager, dispatcher: Dispatcher) => Promise<T>): Promise<T> {
  const [{ createDispatcher }, { CredentialSet }] = await Promise.all([import('./outbound.js'), import('./credential-set.js')])
  const log = createLogger(config.logLevel ?? 'silent', 2, config.logFormat)
  if (config.insecureSkipVerify && !log.isLevelEnabled('warn')) {
    process.stderr.write('bearer-proxy: warning: BEARER_PROXY_INSECURE_SKIP_VERIFY=true: TLS certificates are NOT verified\n')
  }
  const dispatcher = createDispatcher(config, log)
  // A client certificate (RFC 8705) goes to the token endpoint, and to upstreams with UPSTREAM_CLIENT_CERT: the set's own dispatcher.
  const set = new CredentialSet('default', config.tokenSettings, { log, dispatcher, outbound: config })
  try {
    return await work(set.tokens, set.upstreams)
  } finally {
    await Promise.all([set.close(), dispatcher.close()])
  }
}

const DPOP_BOUND = 'bearer-proxy: the token is DPoP-bound (RFC 9449): useless without a proof made with the proxy\'s key, which curl cannot make; send requests through the proxy\n'

/** `token`: the access token alone on stdout; a running proxy's `TOKEN_FILE` when it holds a valid one. */
async function token (config: Config): Promise<number> {
  // The file holds the first credential set's token (the only one without credential sets).
  if (config.tokenFile !== undefined && config.tokenSettings === config.credentialSets.get(defaultSet(config))) {
    const { readTokenFile } = await import('./token/file.js')
    const kept = readTokenFile(config.tokenFile, config.tokenSettings.refreshSkew)
    if (kept !== undefined) {
      process.stdout.write(`${kept}\n`)
      return 0
    }
  }
  return await withCredentialSet(config, async (tokens) => {
    try {
      const held = await tokens.get()
      process.stdout.write(`${held.reveal()}\n`)
      if (held.dpop !== undefined) process.stderr.write(DPOP_BOUND)
      return 0
    } catch (error) {
      process.stderr.write(`bearer-proxy: ${(error as Error).message}\n`)
      return 1
    }
  })
}

/** `check`: one token, then each upstream asked for `CHECK_PATH` with it; one line each, exit 1 if any failed. */
async function check (config: Config): Promise<number> {
  const { upstreamFailure } = await import('./proxy.js')
  return await withCredentialSet(config, async (tokens, dispatcher) => {
    let held
    try {
      held = await tokens.get()
    } catch (error) {
      process.stderr.write(`bearer-proxy: ${(error as Error).message}\n`)
      return 1
    }
    const seconds = Math.round((held.expiresAt - Date.now()) / 1000)
    process.stdout.write(`ok: token obtained\nsubject: ${held.subject ?? '(not a JWT, or no sub claim)'}\n` +
      `expires: ${new Date(held.expiresAt).toISOString()} (in ${seconds} s)\n`)
    if (held.dpop !== undefined) process.stdout.write('binding: DPoP (RFC 9449): the token is bound to the proxy\'s key; requests must go through the proxy\n')
    let failed = false
    for (const route of routesOf(config)) {
      const url = joinPath(route.upstream, config.checkPath)
      const where = `upstream ${route.name} (${displayUrl(url)})`
      const tls = url.protocol === 'https:' ? (config.insecureSkipVerify ? ', TLS NOT verified' : ', TLS verified') : ''
      try {
        const answer = await dispatcher.request({
          origin: url.origin,
          path: url.pathname,
          method: 'GET',
          headers: { ...held.headersFor('GET', url), accept: '*/*' },
          headersTimeout: config.timeout * 1000
        })
        await answer.body.dump()
        const refused = answer.statusCode === 401 || answer.statusCode === 403 || answer.statusCode >= 500
        failed ||= refused
        const verdict = answer.statusCode === 401
          ? 'the token was refused'
          : answer.statusCode === 403 ? 'the token was accepted but may not read this path (set BEARER_PROXY_CHECK_PATH)' : answer.statusCode >= 500 ? 'the upstream failed' : 'token accepted'
        process.stdout.write(`${refused ? 'FAILED' : 'ok'}: ${where} answered ${answer.statusCode}${tls}, ${verdict}\n`)
      } catch (error) {
        failed = true
        process.stdout.write(`FAILED: ${where} ${upstreamFailure(error as Error, config.timeout)[1]}\n`)
      }
    }
    return failed ? 1 : 0
  })
}

/** `clusters`: the clusters `serve` would serve, configured or listed by the Run:ai control plane; exit 1 if they cannot be read. */
async function clusters (config: Config): Promise<number> {
  const line = (name: string, uuid: string, url: string, status: string): string => `${name.padEnd(20)} ${uuid.padEnd(36)} ${url} ${status}\n`
  // The top level's clusters, and each route's own (served under its prefix, listed with its set's tokens).
  const sources = clusterSources(config).map((source) => ({ ...source, token: source.route === undefined ? config.tokenSettings : config.credentialSets.get(source.set) ?? config.tokenSettings }))
  if (sources.length === 0) {
    process.stderr.write('bearer-proxy: no clusters: set BEARER_PROXY_CLUSTERS, or CLUSTERS=auto with a Run:ai control plane as UPSTREAM (in a configuration file: a route\'s clusters:)\n')
    return 0
  }
  const { listClusters } = await import('./cluster-discovery.js')
  let code = 0
  for (const { root, token, controlPlane, listed } of sources) {
    if (sources.length > 1 || root !== CLUSTERS_PREFIX) process.stdout.write(`${root}\n`)
    if (controlPlane === undefined) {
      for (const [name, url] of listed) process.stdout.write(line(name, '-', url.href, 'configured'))
      continue
    }
    code = Math.max(code, await withCredentialSet({ ...config, tokenSettings: token }, async (tokens, dispatcher) => {
      try {
        const list = await listClusters(controlPlane, tokens, dispatcher, config.timeout)
        process.stdout.write(line('NAME', 'UUID', 'URL', 'STATUS'))
        for (const cluster of list.clusters) process.stdout.write(line(cluster.name, cluster.uuid, cluster.url.href, cluster.status))
        for (const { name, reason } of list.skipped) process.stderr.write(`bearer-proxy: not served: ${name}: ${reason}\n`)
        return 0
      } catch (error) {
        process.stderr.write(`bearer-proxy: ${(error as Error).message}\n`)
        return 1
      }
    }))
  }
  return code
}
