import { accessSync, constants, existsSync, readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { parseEnv } from 'node:util'
import envSchema from 'env-schema'
import { Secret, type SecretSource } from './secret.js'

export const PREFIX = 'BEARER_PROXY_'

export const FLAVOURS = ['oidc', 'runai', 'runai-apptoken', 'apiconnect'] as const
export const GRANTS = ['client_credentials', 'password', 'refresh_token', 'app_token', 'api_key'] as const
export type Flavour = typeof FLAVOURS[number]
export type Grant = typeof GRANTS[number]

/** Grants each flavour speaks; the first is the default. */
const FLAVOUR_GRANTS: Record<Flavour, readonly Grant[]> = {
  oidc: ['client_credentials', 'password', 'refresh_token'],
  runai: ['client_credentials', 'password', 'refresh_token', 'app_token'],
  'runai-apptoken': ['app_token'],
  apiconnect: ['password', 'api_key']
}

const SECRETS = ['CLIENT_SECRET', 'PASSWORD', 'REFRESH_TOKEN', 'API_KEY', 'INBOUND_KEY'] as const
type SecretName = typeof SECRETS[number]

const str = { type: 'string', minLength: 1 }
const bool = { type: 'boolean', default: false }

/** The environment variables (README, "Configuration"), without their prefix. */
const SETTINGS: Record<string, object> = {
  AUTH: { type: 'string', enum: FLAVOURS, default: 'oidc' },
  GRANT: { type: 'string', enum: GRANTS },
  TOKEN_URL: str,
  ISSUER: str,
  REALM: str,
  CLIENT_ID: str,
  CLIENT_AUTH: { type: 'string', enum: ['client_secret_post', 'client_secret_basic'], default: 'client_secret_post' },
  USERNAME: str,
  SCOPE: str,
  AUDIENCE: str,
  TOKEN_PARAMS: str,
  APP_NAME: str,
  UPSTREAM: str,
  CLUSTERS: str,
  HOST: { type: 'string', minLength: 1, default: '127.0.0.1' },
  PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 8080 },
  SOCKET: str,
  ALLOW_ANONYMOUS: bool,
  ALLOWED_HOSTS: str,
  ALLOWED_ORIGINS: str,
  ADMIN_ADDRESS: str,
  READ_ONLY: bool,
  ALLOW_PATHS: str,
  DENY_PATHS: str,
  CA_FILE: str,
  INSECURE_SKIP_VERIFY: bool,
  ALLOW_HTTP_TOKEN_ENDPOINT: bool,
  REFRESH_SKEW: { type: 'number', minimum: 0, default: 30 },
  TIMEOUT: { type: 'number', exclusiveMinimum: 0, default: 30 },
  LOG_LEVEL: { type: 'string', enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' }
}
for (const name of SECRETS) {
  SETTINGS[name] = str
  SETTINGS[`${name}_FILE`] = str
}

const schema = {
  type: 'object',
  properties: Object.fromEntries(Object.entries(SETTINGS).map(([name, rule]) => [PREFIX + name, rule]))
}

export type TokenEndpoint = { readonly kind: 'url', readonly url: URL } | { readonly kind: 'issuer', readonly issuer: URL }

/** What the token manager needs: where to ask, and with which credentials. */
export interface TokenSettings {
  readonly flavour: Flavour
  readonly grant: Grant
  readonly endpoint: TokenEndpoint
  readonly clientId: string | undefined
  readonly clientSecret: SecretSource | undefined
  readonly clientAuth: 'client_secret_post' | 'client_secret_basic'
  readonly username: string | undefined
  readonly password: SecretSource | undefined
  readonly refreshToken: SecretSource | undefined
  readonly apiKey: SecretSource | undefined
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
  if (ours.length === 0) {
    throw new ConfigError([
      'no configuration found: set BEARER_PROXY_* environment variables or write them to .env (or pass --env-file PATH).',
      'Examples to copy: config/keycloak.env, config/runai.env, config/runai-keycloak.env, config/apiconnect.env.',
      'To see the proxy work first: npm run demo'
    ], true)
  }

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
  try {
    raw = envSchema({ schema: structuredClone(schema), data, env: false })
  } catch (error) {
    const invalid = schemaProblems(error)
    problems.push(...invalid.map(([, line]) => line))
    // Check the rest too, so that one run reports every problem.
    for (const [name] of invalid) delete data[name]
    raw = envSchema({ schema: structuredClone(schema), data, env: false })
  }
  const config = interpret(raw, options.forwarding ?? true, problems)
  if (problems.length > 0) throw new ConfigError(problems)
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

/** Turns validated strings into a Config, adding every problem it finds to `problems`. */
function interpret (raw: Record<string, unknown>, forwarding: boolean, problems: string[]): Config {
  const get = (name: string): string | undefined => raw[PREFIX + name] as string | undefined
  const flag = (name: string): boolean => raw[PREFIX + name] === true
  const number = (name: string): number => raw[PREFIX + name] as number

  const secret = (name: SecretName): SecretSource | undefined => {
    const value = get(name)
    const file = get(`${name}_FILE`)
    if (value !== undefined && file !== undefined) {
      problems.push(`${PREFIX}${name} and ${PREFIX}${name}_FILE: set one of them, not both`)
      return undefined
    }
    if (file !== undefined) {
      try {
        accessSync(file, constants.R_OK)
      } catch (error) {
        problems.push(`${PREFIX}${name}_FILE: cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
      }
      return { kind: 'file', path: file }
    }
    return value === undefined ? undefined : { kind: 'value', secret: new Secret(value) }
  }

  const url = (name: string): URL | undefined => {
    const value = get(name)
    return value === undefined ? undefined : parseHttpUrl(value, `${PREFIX}${name}`, problems)
  }

  const flavour = get('AUTH') as Flavour
  const allowedGrants = FLAVOUR_GRANTS[flavour]
  const grant = (get('GRANT') as Grant | undefined) ?? allowedGrants[0] as Grant
  if (!allowedGrants.includes(grant)) {
    problems.push(`${PREFIX}GRANT: ${grant} is not a grant of AUTH=${flavour} (use ${allowedGrants.join(', ')})`)
  }

  const upstream = url('UPSTREAM')
  const clusters = parseClusters(get('CLUSTERS'), problems)
  if (forwarding && upstream === undefined && clusters.size === 0) {
    problems.push(`${PREFIX}UPSTREAM: required (the API to forward to), or ${PREFIX}CLUSTERS`)
  }

  const clientSecret = secret('CLIENT_SECRET')
  const password = secret('PASSWORD')
  const refreshToken = secret('REFRESH_TOKEN')
  const apiKey = secret('API_KEY')
  const inboundKey = secret('INBOUND_KEY')
  const clientId = get('CLIENT_ID')
  const username = get('USERNAME')
  const require = (present: unknown, name: string, why: string): void => {
    if (present === undefined) problems.push(`${PREFIX}${name}: required ${why}`)
  }
  const needsClient = flavour === 'oidc' || flavour === 'runai-apptoken' || grant === 'client_credentials' || grant === 'app_token'
  if (needsClient) {
    require(clientId, 'CLIENT_ID', `for AUTH=${flavour} GRANT=${grant}`)
    if (grant !== 'password' && grant !== 'refresh_token') require(clientSecret, 'CLIENT_SECRET', `(or ${PREFIX}CLIENT_SECRET_FILE) for GRANT=${grant}`)
  }
  if (grant === 'password') {
    require(username, 'USERNAME', 'for GRANT=password')
    require(password, 'PASSWORD', `(or ${PREFIX}PASSWORD_FILE) for GRANT=password`)
  }
  if (grant === 'refresh_token') require(refreshToken, 'REFRESH_TOKEN', `(or ${PREFIX}REFRESH_TOKEN_FILE) for GRANT=refresh_token`)
  if (grant === 'api_key') require(apiKey, 'API_KEY', `(or ${PREFIX}API_KEY_FILE) for GRANT=api_key`)

  const endpoint = tokenEndpoint(flavour, url('TOKEN_URL'), url('ISSUER'), upstream, get('REALM'), problems)

  const params: Array<[string, string]> = []
  const tokenParams = get('TOKEN_PARAMS')
  if (tokenParams !== undefined) {
    for (const [key, value] of new URLSearchParams(tokenParams)) {
      if (key === '') problems.push(`${PREFIX}TOKEN_PARAMS: expected k=v&k2=v2`)
      else params.push([key, value])
    }
  }

  const host = get('HOST') as string
  if (host.includes('/') || /\s/.test(host)) problems.push(`${PREFIX}HOST: not a host name or address`)
  const allowAnonymous = flag('ALLOW_ANONYMOUS')
  if (get('SOCKET') === undefined && !isLoopback(host) && inboundKey === undefined && !allowAnonymous) {
    problems.push(`${PREFIX}HOST: ${host} is not a loopback address; anyone who reaches it could use your credentials. ` +
      `Set ${PREFIX}INBOUND_KEY (clients then send Proxy-Authorization: Bearer <key>) or ${PREFIX}ALLOW_ANONYMOUS=true`)
  }

  const caFile = get('CA_FILE')
  if (caFile !== undefined) {
    try {
      accessSync(caFile, constants.R_OK)
    } catch (error) {
      problems.push(`${PREFIX}CA_FILE: cannot read ${caFile} (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
    }
  }

  const timeout = number('TIMEOUT')
  return {
    token: {
      flavour,
      grant,
      endpoint: endpoint as TokenEndpoint,
      clientId,
      clientSecret,
      clientAuth: get('CLIENT_AUTH') as TokenSettings['clientAuth'],
      username,
      password,
      refreshToken,
      apiKey,
      realm: get('REALM'),
      scope: get('SCOPE'),
      audience: get('AUDIENCE'),
      params,
      appName: get('APP_NAME') ?? clientId,
      refreshSkew: number('REFRESH_SKEW'),
      timeout,
      allowHttpTokenEndpoint: flag('ALLOW_HTTP_TOKEN_ENDPOINT')
    },
    upstream,
    clusters,
    host,
    port: number('PORT'),
    socket: get('SOCKET'),
    inboundKey,
    allowAnonymous,
    allowedHosts: list(get('ALLOWED_HOSTS')),
    allowedOrigins: list(get('ALLOWED_ORIGINS')),
    adminAddress: adminAddress(get('ADMIN_ADDRESS'), problems),
    readOnly: flag('READ_ONLY'),
    allowPaths: list(get('ALLOW_PATHS')),
    denyPaths: list(get('DENY_PATHS')),
    caFile,
    insecureSkipVerify: flag('INSECURE_SKIP_VERIFY'),
    timeout,
    logLevel: get('LOG_LEVEL') as string
  }
}

function adminAddress (value: string | undefined, problems: string[]): { host: string, port: number } | undefined {
  if (value === undefined) return undefined
  const address = parseAddress(value)
  if (typeof address === 'object') return address
  problems.push(`${PREFIX}ADMIN_ADDRESS: ${address}`)
  return undefined
}

function tokenEndpoint (flavour: Flavour, tokenUrl: URL | undefined, issuer: URL | undefined, upstream: URL | undefined,
  realm: string | undefined, problems: string[]): TokenEndpoint | undefined {
  if (tokenUrl !== undefined) return { kind: 'url', url: tokenUrl }
  if (flavour === 'oidc') {
    const base = issuer ?? upstream
    if (realm !== undefined && base !== undefined) {
      // Keycloak as Run:ai ships it: <base>/auth/realms/<realm>/protocol/openid-connect/token
      return { kind: 'url', url: joinPath(base, `/auth/realms/${encodeURIComponent(realm)}/protocol/openid-connect/token`) }
    }
    if (issuer !== undefined) return { kind: 'issuer', issuer }
    problems.push(`${PREFIX}TOKEN_URL: required for AUTH=oidc, or ${PREFIX}ISSUER (discovery), or ${PREFIX}REALM with ${PREFIX}UPSTREAM (Keycloak)`)
    return undefined
  }
  const path = { runai: '/api/v1/token', 'runai-apptoken': '/v1/k8s/auth/oauth/apptoken', apiconnect: '/api/token' }[flavour]
  if (upstream === undefined) {
    problems.push(`${PREFIX}TOKEN_URL: required for AUTH=${flavour} when ${PREFIX}UPSTREAM is not set (it is derived as <UPSTREAM>${path})`)
    return undefined
  }
  return { kind: 'url', url: joinPath(upstream, path) }
}

/** `base` with `path` appended to its own path (base paths are kept). */
export function joinPath (base: URL, path: string): URL {
  const url = new URL(base.href)
  url.pathname = base.pathname.replace(/\/+$/, '') + path
  url.search = ''
  url.hash = ''
  return url
}

function parseHttpUrl (value: string, name: string, problems: string[]): URL | undefined {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    problems.push(`${name}: not a URL (expected http://… or https://…)`)
    return undefined
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    problems.push(`${name}: must be an http:// or https:// URL`)
    return undefined
  }
  if (url.username !== '' || url.password !== '') {
    problems.push(`${name}: must not carry a user name or password; use the credential settings`)
    return undefined
  }
  return url
}

const CLUSTER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

function parseClusters (value: string | undefined, problems: string[]): Map<string, URL> {
  const clusters = new Map<string, URL>()
  if (value === undefined) return clusters
  for (const entry of value.split(',').map((part) => part.trim()).filter(Boolean)) {
    const at = entry.indexOf('=')
    const name = at > 0 ? entry.slice(0, at).trim() : ''
    if (!CLUSTER_NAME.test(name)) {
      problems.push(`${PREFIX}CLUSTERS: expected name=url,name=url with names of letters, digits, '.', '_' or '-'`)
      continue
    }
    if (clusters.has(name)) {
      problems.push(`${PREFIX}CLUSTERS: cluster ${name} is listed twice`)
      continue
    }
    const url = parseHttpUrl(entry.slice(at + 1).trim(), `${PREFIX}CLUSTERS (${name})`, problems)
    if (url !== undefined) clusters.set(name, url)
  }
  return clusters
}

/** `host:port`, `[v6]:port`, or a bare port meaning `127.0.0.1:<port>`; a string says what is wrong. */
export function parseAddress (value: string): { host: string, port: number } | string {
  const match = /^(\d+)$/.exec(value) ?? /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d+)$/.exec(value)
  const port = Number(match?.at(-1))
  if (match === null || !Number.isInteger(port) || port > 65535) return 'expected host:port, [v6]:port or a port, e.g. 0.0.0.0:9090 or 9090'
  return { host: match.length === 2 ? '127.0.0.1' : (match[1] ?? match[2] as string), port }
}

function list (value: string | undefined): string[] {
  return value === undefined ? [] : value.split(',').map((part) => part.trim()).filter(Boolean)
}

export function isLoopback (host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '')
  if (bare === 'localhost') return true
  if (isIP(bare) === 4) return bare.startsWith('127.')
  return bare === '::1'
}
