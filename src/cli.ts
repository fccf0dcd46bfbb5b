#!/usr/bin/env -S node --max-semi-space-size=4 --expose-gc --
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { setFlagsFromString } from 'node:v8'
import { FLAGS } from './config/settings.js'
import { packageRoot } from './paths.js'
import { didYouMean } from './suggest.js'

/**
 * The command line: arguments, `--help` and `--version`, then the command itself,
 * loaded only when it runs (`--help` and `--version` load nothing else).
 */

const COMMANDS = {
  serve: 'run the proxy (default)',
  check: 'check the configuration, get one token, and reach each upstream with it',
  token: 'print an access token to stdout (for scripts)',
  health: 'exit 0 if a running proxy\'s /-/ready answers 200 (container health checks)',
  clusters: 'print the clusters the proxy would serve (name, uuid, URL, status)',
  login: 'log in as yourself in a browser (--device: on another device); serve, check and token then use that login',
  logout: 'revoke the stored login at the provider and delete it'
} as const
export type Command = keyof typeof COMMANDS

const column = (left: string, right: string): string => `  ${left.padEnd(22)}${right}`

const USAGE = `Usage: bearer-proxy [command] [flags]

A local reverse proxy that gets and renews OAuth bearer tokens and adds
"Authorization: Bearer <token>" to every request it forwards.

Commands:
${Object.entries(COMMANDS).map(([name, help]) => column(name, help)).join('\n')}

Flags (each is the BEARER_PROXY_* variable named, and wins over it):
${Object.entries(FLAGS).map(([flag, { value, setting, help }]) => `${column(`${flag} ${value}`, help)} (${setting})`).join('\n')}
${column('--config PATH', 'read settings from a YAML or JSON file (keys: clientId, upstream, …)')}
${column('--credentials NAME', 'check, token: the credential set of the --config file to use')}
${column('--env-file PATH', 'read settings from PATH (default: ./.env when present)')}
${column('--device', 'login: show a code to enter on another device (no browser here)')}
${column('--help, --version', '')}

Most used variables (BEARER_PROXY_ and):
${column('AUTH', 'oidc (default), runai, runai-apptoken, apiconnect')}
${column('TOKEN_URL', 'the token endpoint; or ISSUER (discovery), or REALM (Keycloak)')}
${column('CLIENT_ID', 'the client; CLIENT_SECRET or CLIENT_SECRET_FILE its secret')}
${column('GRANT', 'client_credentials (default), password, refresh_token, app_token, api_key')}
${column('INBOUND_KEY', 'the key clients must send when the proxy listens beyond loopback')}
${column('LOG_FORMAT', 'json, or pretty (the default on a terminal)')}
${column('TOKEN_FILE', 'keep the current token in this file, for tools that read one')}

Every setting: the README's "Configuration" section (also in the installed
package), and the examples in config/*.env.
`

export interface Arguments {
  readonly command: Command
  readonly envFile: string | undefined
  readonly configFile: string | undefined
  /** `--credentials NAME`: the credential set `check` and `token` use. */
  readonly credentials: string | undefined
  /** Settings given as flags, by setting name. */
  readonly flags: Readonly<Record<string, string>>
  /** `login --device`: the device authorization grant, for a machine without a browser. */
  readonly device: boolean
}

export class UsageError extends Error {}

/** Flags of the command line itself rather than of a setting. */
const FILES = ['--env-file', '--config', '--credentials']

function parseArguments (argv: readonly string[]): Arguments | 'help' | 'version' {
  let command: Command | undefined
  const files: Record<string, string> = {}
  const flags: Record<string, string> = {}
  let device = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    if (arg === '--help' || arg === '-h') return 'help'
    if (arg === '--version' || arg === '-v') return 'version'
    if (arg === '--device') {
      device = true
    } else if (arg.startsWith('-')) {
      const equals = arg.indexOf('=')
      const name = equals === -1 ? arg : arg.slice(0, equals)
      const known = FLAGS[name]
      const file = FILES.includes(name)
      if (!file && known === undefined) {
        throw new UsageError(`unknown flag ${name}${didYouMean(name, [...Object.keys(FLAGS), ...FILES, '--device', '--help', '--version'])}`)
      }
      const value = equals === -1 ? argv[++i] : arg.slice(equals + 1)
      if (value === undefined || value === '') throw new UsageError(`${name} needs a value${known === undefined ? (name === '--credentials' ? ' (a name)' : ' (a path)') : ` (${known.value})`}`)
      if (known === undefined) {
        files[name] = value
      } else if (known.repeatable === true && flags[known.setting] !== undefined) {
        flags[known.setting] += `,${value}`
      } else {
        flags[known.setting] = value
      }
    } else if (arg in COMMANDS && command === undefined) {
      command = arg as Command
    } else {
      throw new UsageError(`unknown command ${JSON.stringify(arg)}${command === undefined ? didYouMean(arg, Object.keys(COMMANDS)) : ''}`)
    }
  }
  if (device && command !== 'login') throw new UsageError('--device is a flag of login')
  return { command: command ?? 'serve', envFile: files['--env-file'], configFile: files['--config'], credentials: files['--credentials'], flags, device }
}

function version (): string {
  const pkg = JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }
  return pkg.version
}

async function main (): Promise<number> {
  let parsed: ReturnType<typeof parseArguments>
  try {
    parsed = parseArguments(process.argv.slice(2))
  } catch (error) {
    if (!(error instanceof UsageError)) throw error
    process.stderr.write(`bearer-proxy: ${error.message}\nRun bearer-proxy --help for the commands and flags.\n`)
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
  // Memory, measured with `npm run bench` and test/large.test.ts:
  // - undici parses HTTP with llhttp compiled to WebAssembly; optimising it with TurboFan
  //   costs a ~35 MiB spike at the first request for no measurable gain here.
  // - The shebang's --max-semi-space-size=4 caps V8's young generation (16 MiB semi-spaces
  //   by default), which short-lived request objects filled: peak RSS under the bench 146 → 103–110 MiB.
  //   It only takes effect on node's command line, hence the shebang (and `npm start`'s node flags).
  // - --expose-gc lets a reload collect the generation it replaced at once (src/commands.ts).
  setFlagsFromString('--liftoff-only')
  // A health probe loads only what it needs: no settings check (Ajv), no token or server code.
  const { run } = parsed.command === 'health' ? await import('./health.js') : await import('./commands.js')
  return await run(parsed)
}

main().then((code) => {
  process.exitCode = code
}, (error: unknown) => {
  process.stderr.write(`bearer-proxy: ${(error as Error).message}\n`)
  process.exit(1)
})
