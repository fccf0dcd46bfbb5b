#!/usr/bin/env -S node --max-semi-space-size=4 --
import { readFileSync } from 'node:fs'
import { setFlagsFromString } from 'node:v8'
import { request } from 'node:http'
import { type Config, ConfigError, loadConfig } from './config.js'
import { createLogger } from './log.js'
import { createDispatcher } from './outbound.js'
import { ListenError, type RunningProxy, startProxy } from './server.js'
import { TokenManager } from './token/manager.js'

const USAGE = `Usage: bearer-proxy [command] [--env-file PATH]

A local reverse proxy that gets and renews OAuth bearer tokens and adds
"Authorization: Bearer <token>" to every request it forwards.

Commands:
  serve     run the proxy (default)
  check     check the configuration, get one token, print its subject and expiry
  token     print a fresh access token to stdout (for scripts)
  health    exit 0 if a running proxy's /-/ready answers 200 (container health checks)

Options:
  --env-file PATH   read settings from PATH (default: ./.env when present)
  --help            show this help
  --version         print the version

Settings are BEARER_PROXY_* environment variables; see the README and config/*.env.
`

const SHUTDOWN_GRACE_MS = 10_000

// Memory, measured with `npm run bench` and test/large.test.ts:
// - undici parses HTTP with llhttp compiled to WebAssembly; optimising it with TurboFan
//   costs a ~35 MiB spike at the first request for no measurable gain here.
// - The shebang's --max-semi-space-size=4 caps V8's young generation (16 MiB semi-spaces
//   by default), which short-lived request objects filled: peak RSS under the bench 146 → 103–110 MiB.
//   It only takes effect on node's command line, hence the shebang, which `npm start`, the image and the tests run by.
setFlagsFromString('--liftoff-only')

type Command = 'serve' | 'check' | 'token' | 'health'

interface Arguments { command: Command, envFile: string | undefined }

function parseArguments (argv: readonly string[]): Arguments | 'help' | 'version' {
  let command: Command | undefined
  let envFile: string | undefined
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    if (arg === '--help' || arg === '-h') return 'help'
    if (arg === '--version' || arg === '-v') return 'version'
    if (arg === '--env-file' || arg.startsWith('--env-file=')) {
      envFile = arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : argv[++i]
      if (envFile === undefined || envFile === '') throw new UsageError('--env-file needs a path')
    } else if (['serve', 'check', 'token', 'health'].includes(arg) && command === undefined) {
      command = arg as Command
    } else {
      throw new UsageError(`unknown argument ${JSON.stringify(arg)}`)
    }
  }
  return { command: command ?? 'serve', envFile }
}

class UsageError extends Error {}

async function main (): Promise<number> {
  let parsed: ReturnType<typeof parseArguments>
  try {
    parsed = parseArguments(process.argv.slice(2))
  } catch (error) {
    process.stderr.write(`bearer-proxy: ${(error as Error).message}\n\n${USAGE}`)
    return 2
  }
  if (parsed === 'help') {
    process.stdout.write(USAGE)
    return 0
  }
  if (parsed === 'version') {
    process.stdout.write(`${version()}\n`)
    return 0
  }

  let config: Config
  try {
    config = loadConfig({ envFile: parsed.envFile, forwarding: parsed.command === 'serve' })
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    const lines = error.empty ? error.problems : ['configuration error:', ...error.problems.map((line) => `  ${line}`)]
    process.stderr.write(lines.map((line) => `bearer-proxy: ${line}`).join('\n') + '\n')
    return 2
  }

  switch (parsed.command) {
    case 'serve': return await serve(config)
    case 'check': return await check(config, false)
    case 'token': return await check(config, true)
    case 'health': return await health(config)
  }
}

async function serve (config: Config): Promise<number> {
  const log = createLogger(config.logLevel)
  let proxy: RunningProxy
  try {
    proxy = await startProxy(config, log)
  } catch (error) {
    if (!(error instanceof ListenError)) throw error
    log.flush()
    process.stderr.write(`bearer-proxy: ${error.message}\n`)
    return 2
  }
  let stopping = false
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now')
      process.exit(1)
    }
    stopping = true
    log.info({ signal }, 'shutting down: no new connections; in-flight requests get up to 10 s')
    setTimeout(() => {
      log.warn('in-flight requests did not finish within 10 s; exiting')
      process.exit(0)
    }, SHUTDOWN_GRACE_MS).unref()
    proxy.close().finally(() => {
      log.info('stopped')
      log.flush()
      process.exit(0)
    })
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  return await new Promise<number>(() => {})
}

/** `check` and `token`: one token, logs on stderr. */
async function check (config: Config, printToken: boolean): Promise<number> {
  const log = createLogger(config.logLevel === 'info' ? 'warn' : config.logLevel, 2)
  const dispatcher = createDispatcher(config, log)
  const tokens = new TokenManager(config.token, { dispatcher, log })
  try {
    const token = await tokens.get()
    if (printToken) {
      process.stdout.write(`${token.authorization.slice('Bearer '.length)}\n`)
    } else {
      const seconds = Math.round((token.expiresAt - Date.now()) / 1000)
      process.stdout.write(`ok: token obtained\nsubject: ${token.subject ?? '(not a JWT, or no sub claim)'}\n` +
        `expires: ${new Date(token.expiresAt).toISOString()} (in ${seconds} s)\n`)
    }
    return 0
  } catch (error) {
    process.stderr.write(`bearer-proxy: ${(error as Error).message}\n`)
    return 1
  } finally {
    tokens.close()
    await dispatcher.close()
  }
}

/** `health`: exit 0 if the running proxy's `/-/ready` answers 200. */
async function health (config: Config): Promise<number> {
  const host = config.host === '0.0.0.0' ? '127.0.0.1' : config.host === '::' ? '::1' : config.host
  const target = config.socket === undefined ? { host, port: config.port } : { socketPath: config.socket }
  const status = await new Promise<number>((resolve) => {
    const req = request({ ...target, path: '/-/ready', method: 'GET', headers: { host: 'localhost' }, timeout: 5000 }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', (error) => {
      process.stderr.write(`bearer-proxy: health: ${(error as NodeJS.ErrnoException).code ?? error.message}\n`)
      resolve(0)
    })
    req.end()
  })
  if (status !== 200 && status !== 0) process.stderr.write(`bearer-proxy: health: /-/ready answered ${status}\n`)
  return status === 200 ? 0 : 1
}

function version (): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  return pkg.version
}

main().then((code) => {
  process.exitCode = code
}, (error: unknown) => {
  process.stderr.write(`bearer-proxy: ${(error as Error).message}\n`)
  process.exit(1)
})
