import { existsSync, readFileSync } from 'node:fs'
import { parseEnv } from 'node:util'
import envSchema from 'env-schema'
import type { SecretSource } from './secret.js'
import { interpret } from './config/rules.js'
import { firstSetup, type Flavour, PREFIX, SCHEMA, SETTINGS } from './config/settings.js'

/**
 * The configuration: the result's types and `loadConfig`. Reading and schema checks
 * are here; the settings table is `config/settings.ts`, single values are parsed in
 * `config/values.ts`, cross-field rules live in `config/rules.ts`.
 */
export { type Flavour, type Grant, PREFIX } from './config/settings.js'
export { isLoopback, joinPath, parseAddress } from './config/values.js'

/** Where tokens come from: a token endpoint, or issuers whose discovery documents name one (the first that exists wins). */
export type TokenEndpoint = { readonly kind: 'url', readonly url: URL } | { readonly kind: 'issuer', readonly issuers: readonly [URL, ...URL[]] }

/** A client as the token endpoint knows it; `secret` is absent for public clients. */
export interface Client { readonly id: string, readonly secret: SecretSource | undefined }

/**
 * Exactly what a grant sends, by grant: a dialect switches on `grant` and finds
 * every value it needs present (the table in `config/settings.ts` requires them).
 */
export type Credentials =
  | { readonly grant: 'client_credentials' | 'app_token', readonly client: { readonly id: string, readonly secret: SecretSource } }
  | { readonly grant: 'password', readonly username: string, readonly password: SecretSource, readonly client: Client | undefined }
  | { readonly grant: 'refresh_token', readonly refreshToken: SecretSource, readonly client: Client | undefined }
  | { readonly grant: 'api_key', readonly apiKey: SecretSource, readonly client: Client | undefined }

/** The secrets of a set of credentials, to be kept out of anything an endpoint echoes. */
export function secretsOf (credentials: Credentials): SecretSource[] {
  const all = [credentials.client?.secret]
  if (credentials.grant === 'password') all.push(credentials.password)
  if (credentials.grant === 'refresh_token') all.push(credentials.refreshToken)
  if (credentials.grant === 'api_key') all.push(credentials.apiKey)
  return all.filter((source): source is SecretSource => source !== undefined)
}

/** What the token manager needs: where to ask, and with which credentials. */
export interface TokenSettings {
  readonly flavour: Flavour
  readonly credentials: Credentials
  readonly endpoint: TokenEndpoint
  readonly clientAuth: 'client_secret_post' | 'client_secret_basic'
  readonly realm: string | undefined
  readonly scope: string | undefined
  readonly audience: string | undefined
  readonly params: ReadonlyArray<readonly [string, string]>
  readonly appName: string | undefined
  /** Seconds before expiry at which a token counts as expired (capped at 10% of its lifetime). */
  readonly refreshSkew: number
  /** Seconds to wait for the token endpoint. */
  readonly timeout: number
  /** An https issuer may name a plain http token endpoint (credentials then travel unencrypted). */
  readonly allowHttpTokenEndpoint: boolean
}

export interface Config {
  readonly token: TokenSettings
  readonly upstream: URL | undefined
  readonly clusters: ReadonlyMap<string, URL>
  readonly host: string
  readonly port: number
  readonly socket: string | undefined
  readonly inboundKey: SecretSource | undefined
  readonly allowAnonymous: boolean
  readonly allowedHosts: readonly string[]
  readonly allowedOrigins: readonly string[]
  readonly adminAddress: { readonly host: string, readonly port: number } | undefined
  readonly readOnly: boolean
  readonly allowPaths: readonly string[]
  readonly denyPaths: readonly string[]
  readonly caFile: string | undefined
  readonly insecureSkipVerify: boolean
  /** Seconds to wait for upstream response headers. */
  readonly timeout: number
  readonly logLevel: string
}

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

export interface LoadOptions {
  /** `--env-file PATH`; without it `./.env` is read when present. */
  readonly envFile?: string | undefined
  readonly env?: NodeJS.ProcessEnv
  readonly cwd?: string
  /** `serve` needs somewhere to forward to; `check` and `token` do not. */
  readonly forwarding?: boolean
}

export function loadConfig (options: LoadOptions = {}): Config {
  const env = options.env ?? process.env
  const fileVars = readEnvFile(options)
  const merged: Record<string, string | undefined> = { ...fileVars, ...env }
  const ours = Object.keys(merged).filter((key) => key.startsWith(PREFIX))
  if (ours.length === 0) throw new ConfigError(firstSetup(), true)

  const problems: string[] = []
  for (const key of ours) {
    if (!(key.slice(PREFIX.length) in SETTINGS)) problems.push(`${key}: unknown setting`)
  }
  const data: Record<string, string> = {}
  for (const key of ours) {
    const value = merged[key]
    // An empty variable is the same as an unset one (as `FOO= cmd` users expect).
    if (value !== undefined && value !== '') data[key] = value
  }
  let raw: Record<string, unknown>
  const invalid = new Set<string>()
  try {
    raw = envSchema({ schema: structuredClone(SCHEMA), data, env: false })
  } catch (error) {
    const found = schemaProblems(error)
    problems.push(...found.map(([, line]) => line))
    // Check the rest too, so that one run reports every problem.
    for (const [name] of found) {
      delete data[name]
      invalid.add(name.slice(PREFIX.length))
    }
    raw = envSchema({ schema: structuredClone(SCHEMA), data, env: false })
  }
  const given = new Set(Object.keys(data).map((key) => key.slice(PREFIX.length)))
  const config = interpret(raw, { forwarding: options.forwarding ?? true, given, invalid }, problems)
  if (problems.length > 0 || config === undefined) throw new ConfigError(problems)
  return config
}

function readEnvFile (options: LoadOptions): Record<string, string> {
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

interface AjvProblem { instancePath?: string, message?: string, params?: { allowedValues?: unknown[] } }

/** [variable, line] for each schema violation. */
function schemaProblems (error: unknown): Array<[string, string]> {
  const list = (error as { errors?: AjvProblem[] }).errors ?? []
  return list.map((problem) => {
    const name = (problem.instancePath ?? '').replace(/^\//, '')
    const allowed = problem.params?.allowedValues
    const suffix = Array.isArray(allowed) ? `: ${allowed.join(', ')}` : ''
    return [name, `${name}: ${problem.message ?? 'invalid'}${suffix}`]
  })
}

