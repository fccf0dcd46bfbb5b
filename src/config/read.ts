import { existsSync, readFileSync } from 'node:fs'
import { parseEnv } from 'node:util'
import { type FileSettings, readConfigFile } from './file.js'
import { FLAGS, PREFIX } from './settings.js'
import { parseAddress } from './values.js'

/**
 * Reading the settings from their sources, without checking them: all that `health`
 * needs (where the proxy listens), so that it loads neither env-schema nor Ajv, whose
 * start costs a health probe ~100 ms. `loadConfig` (config.ts) reads them here too.
 */

/** Start-up refused: one line per problem, none of them holding a secret value. */
export class ConfigError extends Error {
  readonly problems: readonly string[]
  readonly empty: boolean

  constructor (problems: readonly string[], empty = false) {
    super(problems.join('\n'))
    this.name = 'ConfigError'
    this.problems = problems
    this.empty = empty
  }
}

/** A refused configuration, on stderr, exit status 2; anything else is thrown on. */
export function refused (error: unknown): number {
  if (!(error instanceof ConfigError)) throw error
  const lines = error.empty ? error.problems : ['configuration error:', ...error.problems.map((line) => `  ${line}`)]
  process.stderr.write(lines.map((line) => `bearer-proxy: ${line}`).join('\n') + '\n')
  return 2
}

export interface LoadOptions {
  /** `--env-file PATH`; without it `./.env` is read when present. */
  readonly envFile?: string | undefined
  readonly env?: NodeJS.ProcessEnv
  readonly cwd?: string
  /** `serve` needs somewhere to forward to; `check` and `token` do not. */
  readonly forwarding?: boolean
  /** Settings given as command-line flags (by setting name, without the prefix): they win over the environment. */
  readonly flags?: Readonly<Record<string, string>>
  /** `--config PATH`: a YAML or JSON file of settings, under the environment and the flags. */
  readonly configFile?: string | undefined
}

interface Settings {
  /** The configuration file's own sections (credential sets, routes), when there is one. */
  readonly file: FileSettings | undefined
  /** The `BEARER_PROXY_*` values, set and non-empty. */
  readonly data: Record<string, string>
  /** How the user wrote each setting that did not come from a variable (`--port`, `proxy.yaml:4: port`), by setting name. */
  readonly origins: Record<string, string>
  /** What was wrong in the configuration file itself. */
  readonly problems: string[]
}

/**
 * The settings from every source, each winning over the one before: the
 * configuration file, the env file (`./.env` only when neither `--env-file` nor
 * `--config` is given), the environment, the flags.
 */
export function readSettings (options: LoadOptions): Settings {
  const file = options.configFile === undefined ? undefined : readConfigFile(options.configFile)
  const merged: Record<string, string | undefined> = {}
  for (const [name, value] of Object.entries(file?.values ?? {})) merged[PREFIX + name] = value
  Object.assign(merged, readEnvFile(options), options.env ?? process.env)
  for (const [name, value] of Object.entries(options.flags ?? {})) merged[PREFIX + name] = value
  const data: Record<string, string> = {}
  for (const [key, value] of Object.entries(merged)) {
    // An empty variable is the same as an unset one (as `FOO= cmd` users expect).
    if (key.startsWith(PREFIX) && value !== undefined && value !== '') data[key] = value
  }
  const origins: Record<string, string> = {}
  for (const [name, where] of Object.entries(file?.origins ?? {})) {
    if (data[PREFIX + name] === file?.values[name]) origins[name] = where
  }
  for (const [flag, { setting }] of Object.entries(FLAGS)) {
    if (options.flags?.[setting] !== undefined) origins[setting] = flag
  }
  return { file, data, origins, problems: file?.problems ?? [] }
}

/** Problems about a setting given as a flag or in the configuration file name it as the user wrote it. */
export function asWritten (problems: readonly string[], origins: Readonly<Record<string, string>>): string[] {
  const written = Object.entries(origins)
  return problems.map((line) => {
    const match = written.find(([setting]) => line.startsWith(`${PREFIX}${setting}:`) || line.startsWith(`${PREFIX}${setting} (`))
    return match === undefined ? line : `${match[1]}${line.slice(PREFIX.length + match[0].length)}`
  })
}

/** Where a running proxy listens: all that `health` needs, so it runs without credentials. */
export interface Listening {
  readonly host: string
  readonly port: number
  readonly socket: string | undefined
  readonly adminAddress: { readonly host: string, readonly port: number } | undefined
}

export function loadListening (options: LoadOptions = {}): Listening {
  const { data, origins, problems: fileProblems } = readSettings(options)
  if (fileProblems.length > 0) throw new ConfigError(fileProblems)
  const get = (name: string): string | undefined => data[PREFIX + name]
  const problems: string[] = []
  const portText = get('PORT') ?? '8080'
  const port = /^\d{1,5}$/.test(portText) && Number(portText) <= 65535 ? Number(portText) : NaN
  if (Number.isNaN(port)) problems.push(`${PREFIX}PORT: must be a port number, 0 to 65535`)
  const admin = get('ADMIN_ADDRESS') === undefined ? undefined : parseAddress(get('ADMIN_ADDRESS') as string)
  if (typeof admin === 'string') problems.push(`${PREFIX}ADMIN_ADDRESS: ${admin}`)
  if (problems.length > 0) throw new ConfigError(asWritten(problems, origins))
  return { host: get('HOST') ?? '127.0.0.1', port, socket: get('SOCKET'), adminAddress: typeof admin === 'object' ? admin : undefined }
}

function readEnvFile (options: LoadOptions): Record<string, string> {
  if (options.envFile === undefined && options.configFile !== undefined) return {}
  const path = options.envFile ?? '.env'
  const resolved = options.cwd !== undefined && !path.startsWith('/') ? `${options.cwd}/${path}` : path
  if (options.envFile === undefined && !existsSync(resolved)) return {}
  let text: string
  try {
    text = readFileSync(resolved, 'utf8')
  } catch (error) {
    throw new ConfigError([`--env-file ${path}: cannot read it (${(error as NodeJS.ErrnoException).code ?? 'error'})`])
  }
  return parseEnv(text) as Record<string, string>
}
