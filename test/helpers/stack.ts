import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type EventEmitter, once } from 'node:events'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import type { Logger } from 'pino'
import { type Config, loadConfig } from '../../src/config.js'
import { API_AUDIENCE, type Idp, type IdpOptions, startIdp } from '../../demo/idp.js'
import { createLogger } from '../../src/log.js'
import { createDispatcher } from '../../src/outbound.js'
import { type RunningProxy, type StartOptions, startProxy } from '../../src/server.js'
import { TokenClient } from '../../src/oauth/token-client.js'
import { TokenManager, type TokenManagerOptions } from '../../src/token/manager.js'
import { startUpstream, type Upstream } from './upstream.js'

/** What a tap test offers for clean-up. */
export interface Teardown { teardown: (fn: () => unknown) => void }

export const CLIENT = { clientId: 'proxy-client', clientSecret: 'cs-7Hq2-secret-Zx91' }
export const USER = { username: 'alice', password: 'pw-alice-Kd83-secret' }
export const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url))

export async function startIdentity (t: Teardown, options: Partial<IdpOptions> = {}): Promise<Idp> {
  const idp = await startIdp({ clients: [CLIENT], users: { [USER.username]: USER.password }, accessTokenTtl: 60, ...options })
  t.teardown(() => idp.close())
  return idp
}

export async function startApiOf (t: Teardown, idp: Idp): Promise<Upstream> {
  const upstream = await startUpstream({ jwks: idp.jwks, issuer: idp.issuer, audience: API_AUDIENCE })
  t.teardown(() => upstream.close())
  return upstream
}

/** The settings of a proxy for `idp` in front of `upstream`, with client credentials. */
export function baseEnv (idp: Idp, upstream: { url: string }): Record<string, string> {
  return {
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
    BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret,
    BEARER_PROXY_UPSTREAM: upstream.url,
    BEARER_PROXY_PORT: '0'
  }
}

export function configOf (env: Record<string, string>): Config {
  return loadConfig({ env, envFile: '/dev/null' })
}

/** Log lines kept in memory, for assertions and the secrets scan. */
export class LogCapture extends Writable {
  readonly lines: string[] = []
  override _write (chunk: Buffer, _encoding: string, done: () => void): void {
    this.lines.push(...chunk.toString('utf8').split('\n').filter(Boolean))
    this.emit('lines')
    done()
  }

  /** Resolves once `predicate` holds of the lines, checked at each write; fails after `timeoutMs`. */
  async until (predicate: (capture: LogCapture) => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = AbortSignal.timeout(timeoutMs)
    while (!predicate(this)) {
      try {
        await once(this, 'lines', { signal: deadline })
      } catch {
        throw new Error(`no ${what} within ${timeoutMs} ms`)
      }
    }
  }

  get text (): string { return this.lines.join('\n') }
  events (name: string): Array<Record<string, unknown>> {
    return this.lines.map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => entry.event === name)
  }
}

export interface TestProxy {
  readonly url: string
  readonly proxy: RunningProxy
  readonly logs: LogCapture
}

/** The proxy in this process (as `serve` runs it), logs captured. */
export async function startTestProxy (t: Teardown, env: Record<string, string>, options: StartOptions = {}, config: Config = configOf(env)): Promise<TestProxy> {
  const logs = new LogCapture()
  const proxy = await startProxy(config, createLogger(config.logLevel ?? 'info', logs), options)
  t.teardown(() => proxy.close())
  return { url: proxy.address, proxy, logs }
}

/** A token manager on its own, logs captured. */
export function startTokenManager (t: Teardown, env: Record<string, string>, options: Omit<TokenManagerOptions, 'log' | 'skew'> = {}): { tokens: TokenManager, logs: LogCapture, log: Logger } {
  const config = loadConfig({ env, envFile: '/dev/null', forwarding: false })
  const logs = new LogCapture()
  const log = createLogger(env.BEARER_PROXY_LOG_LEVEL ?? 'info', logs)
  const dispatcher = createDispatcher(config, log)
  const tokens = new TokenManager(new TokenClient(config.tokenSettings, dispatcher, log), { log, skew: config.tokenSettings.refreshSkew, ...options })
  t.teardown(async () => {
    tokens.close()
    await dispatcher.close()
  })
  return { tokens, logs, log }
}

/**
 * Resolves once `predicate` holds, checked now and at each token request's end
 * (the token manager's `fetch` event, emitted after its log line); fails after `timeoutMs`.
 */
export async function afterFetch (tokens: EventEmitter, predicate: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  if (predicate()) return
  await new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (!predicate()) return
      clearTimeout(timer)
      tokens.off('fetch', check)
      resolve()
    }
    const timer = setTimeout(() => {
      tokens.off('fetch', check)
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`))
    }, timeoutMs)
    tokens.on('fetch', check)
  })
}

/** `promise`, or a failure naming `what` after `timeoutMs`. */
export async function bounded<T> (promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

export interface CliResult { code: number | null, stdout: string, stderr: string }

/** Runs `bearer-proxy` (dist/cli.js) to completion, with only the given BEARER_PROXY_* settings. */
export async function runCli (args: string[], env: Record<string, string>, options: { cwd?: string, timeoutMs?: number } = {}): Promise<CliResult> {
  const child = spawnCli(args, env, options.cwd)
  const out = collect(child)
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 20_000)
  const [code] = await once(child, 'exit') as [number | null]
  clearTimeout(timer)
  return { code, ...out() }
}

export function spawnCli (args: string[], env: Record<string, string>, cwd?: string): ChildProcess {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('BEARER_PROXY_')))
  // tap adds its process-tracking loader to NODE_OPTIONS of every child it sees spawned; `env -u`
  // removes it, then execs dist/cli.js itself: its shebang's node flags apply, as for users.
  // A clean directory unless told otherwise: never the repository's, where a user's .env would be read.
  return spawn('env', ['-u', 'NODE_OPTIONS', CLI, ...args], { env: { ...clean, ...env }, cwd: cwd ?? cleanDirectory(), stdio: ['ignore', 'pipe', 'pipe'] })
}

let clean: string | undefined

/** One empty temporary directory for this test process, where the CLI runs by default. */
export function cleanDirectory (): string {
  clean ??= mkdtempSync(join(tmpdir(), 'bearer-proxy-cwd-'))
  return clean
}

export function collect (child: ChildProcess): () => { stdout: string, stderr: string } {
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  return () => ({ stdout, stderr })
}

/** Resolves with the first line of `stream` (stdout by default) matching `pattern`; fails after `timeoutMs`. */
export async function waitForLine (child: ChildProcess, pattern: RegExp, timeoutMs = 10_000, stream: 'stdout' | 'stderr' = 'stdout'): Promise<string> {
  return await new Promise((resolve, reject) => {
    let buffer = ''
    const timer = setTimeout(() => { cleanup(); reject(new Error(`no line matching ${pattern} within ${timeoutMs} ms:\n${buffer}`)) }, timeoutMs)
    const onData = (chunk: Buffer): void => {
      buffer += chunk.toString()
      const line = buffer.split('\n').find((candidate) => pattern.test(candidate))
      if (line !== undefined) { cleanup(); resolve(line) }
    }
    const onExit = (): void => { cleanup(); reject(new Error(`process exited before a line matching ${pattern}:\n${buffer}`)) }
    const cleanup = (): void => {
      clearTimeout(timer)
      child[stream]?.off('data', onData)
      child.off('exit', onExit)
    }
    child[stream]?.on('data', onData)
    child.once('exit', onExit)
  })
}

/** Opens a WebSocket, sends `text`, returns the first message back, closes. */
export async function wsRoundTrip (url: string, text: string): Promise<string> {
  const { default: WebSocket } = await import('ws')
  const client = new WebSocket(url)
  await once(client, 'open')
  client.send(text)
  const [message] = await once(client, 'message') as [Buffer]
  client.close()
  await once(client, 'close')
  return String(message)
}

export interface RawResponse { status: number, headers: import('node:http').IncomingHttpHeaders, body: string }

/** A request through node:http, which sends headers (keep-alive, te, upgrade…) that fetch and undici refuse. */
export async function httpRequest (url: string, options: { method?: string, headers?: Record<string, string>, body?: string } = {}): Promise<RawResponse> {
  const { request } = await import('node:http')
  return await new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? 'GET', headers: options.headers }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.setTimeout(10_000, () => req.destroy(new Error('request timed out')))
    req.end(options.body)
  })
}

/** Sends `text` as is over a TCP connection (no client normalises it) and returns the whole answer. */
export async function rawHttp (url: string, text: string): Promise<string> {
  const { connect } = await import('node:net')
  const { hostname, port } = new URL(url)
  return await new Promise((resolve, reject) => {
    // Written, not ended: a half-closed client would lose answers that take a moment.
    const socket = connect(Number(port), hostname, () => socket.write(text))
    let answer = ''
    socket.setEncoding('utf8').on('data', (chunk: string) => { answer += chunk }).on('end', () => resolve(answer)).on('error', reject)
    socket.setTimeout(5000, () => socket.destroy(new Error('timeout')))
  })
}
