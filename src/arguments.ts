import { FLAGS } from './config/settings.js'
import { didYouMean } from './suggest.js'

/** The command line's words: the command, its flags and the files it names, checked; `--help` and `--version` as such. */

export const COMMANDS = {
  serve: 'run the proxy (default)',
  check: 'check the configuration, get one token, and reach each upstream with it',
  token: 'print an access token to stdout (for scripts)',
  health: 'exit 0 if a running proxy\'s /-/ready answers 200 (container health checks)',
  clusters: 'print the clusters the proxy would serve (name, uuid, URL, status)',
  login: 'log in as yourself in a browser (--device: on another device); serve, check and token then use that login',
  logout: 'revoke the stored login at the provider and delete it'
} as const
export type Command = keyof typeof COMMANDS

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

export function parseArguments (argv: readonly string[]): Arguments | 'help' | 'version' {
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

