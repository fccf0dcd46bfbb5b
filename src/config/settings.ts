import { join, sep } from 'node:path'
import { CLIENT_AUTHS, type ClientAuth, FLAVOURS, type Flavour, GRANTS, type GrantName } from '../oauth/settings.js'
import { packageRoot } from '../package-root.js'
import { PREFIX } from '../prefix.js'

/** The settings: their names, value rules (for env-schema), and what each flavour × grant needs. */

export { PREFIX }
export type { ClientAuth, Flavour, GrantName }

/** Secrets: each also has a `_FILE` form. */
export const SECRETS = ['CLIENT_SECRET', 'PASSWORD', 'REFRESH_TOKEN', 'API_KEY', 'INBOUND_KEY'] as const
export type SecretName = typeof SECRETS[number]

/** The credential settings a grant can need. */
export type Needed = 'CLIENT_ID' | 'CLIENT_SECRET' | 'USERNAME' | 'PASSWORD' | 'REFRESH_TOKEN' | 'API_KEY' | 'CLIENT_KEY_FILE' | 'CLIENT_CERT_FILE' | 'SUBJECT_TOKEN_FILE'


/**
 * The one table of what each flavour × grant needs: the grants a flavour speaks
 * (the first is its default) and the settings each requires. Validation and the
 * "no configuration" message both read it.
 */
export const NEEDS: { readonly [F in Flavour]: Partial<Readonly<Record<GrantName, readonly Needed[]>>> } = {
  oidc: {
    client_credentials: ['CLIENT_ID', 'CLIENT_SECRET'],
    password: ['CLIENT_ID', 'USERNAME', 'PASSWORD'],
    refresh_token: ['CLIENT_ID', 'REFRESH_TOKEN'],
    jwt_bearer: ['CLIENT_ID', 'CLIENT_KEY_FILE'],
    login: ['CLIENT_ID'],
    token_exchange: ['SUBJECT_TOKEN_FILE']
  },
  runai: {
    client_credentials: ['CLIENT_ID', 'CLIENT_SECRET'],
    password: ['USERNAME', 'PASSWORD'],
    refresh_token: ['REFRESH_TOKEN'],
    app_token: ['CLIENT_ID', 'CLIENT_SECRET'],
    login: ['CLIENT_ID'],
    token_exchange: ['SUBJECT_TOKEN_FILE']
  },
  'runai-apptoken': {
    app_token: ['CLIENT_ID', 'CLIENT_SECRET']
  },
  apiconnect: {
    password: ['USERNAME', 'PASSWORD'],
    api_key: ['API_KEY']
  }
}

/** The grants of a flavour, its default first. */
export function grantsOf (flavour: Flavour): GrantName[] {
  return Object.keys(NEEDS[flavour]) as GrantName[]
}

const str = { type: 'string', minLength: 1 }
const bool = { type: 'boolean', default: false }

/** Every environment variable, without its prefix, with its value rule (README, "Configuration"). */
export const SETTINGS: Record<string, object> = {
  AUTH: { type: 'string', enum: FLAVOURS, default: 'oidc' },
  GRANT: { type: 'string', enum: GRANTS },
  TOKEN_URL: str,
  ISSUER: str,
  REALM: str,
  CLIENT_ID: str,
  CLIENT_AUTH: { type: 'string', enum: CLIENT_AUTHS, default: 'client_secret_post' },
  CLIENT_KEY_FILE: str,
  CLIENT_KEY_ID: str,
  CLIENT_ASSERTION_AUDIENCE: { type: 'string', enum: ['token_endpoint', 'issuer'], default: 'token_endpoint' },
  SERVICE_ACCOUNT_FILE: str,
  SUBJECT_TOKEN_FILE: str,
  SUBJECT_TOKEN_TYPE: str,
  REQUESTED_TOKEN_TYPE: str,
  RESOURCE: str,
  CLIENT_ASSERTION_FILE: str,
  DPOP: { type: 'string', enum: ['false', 'true', 'required'], default: 'false' },
  DPOP_KEY_FILE: str,
  ASSERTION_FILE: str,
  CLIENT_CERT_FILE: str,
  UPSTREAM_CLIENT_CERT: bool,
  TOKEN_STORE: str,
  LOGIN_PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 0 },
  // Durations that go into timers are bounded: a timer cannot wait 2^31 ms or more (it would fire at once).
  LOGIN_TIMEOUT: { type: 'number', exclusiveMinimum: 0, maximum: 86_400, default: 300 },
  USERNAME: str,
  SCOPE: str,
  AUDIENCE: str,
  TOKEN_PARAMS: str,
  APP_NAME: str,
  RUNAI_TOKEN_API: { type: 'string', enum: ['v2', 'v1'] },
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
  REFRESH_SKEW: { type: 'number', minimum: 0, maximum: 86_400, default: 30 },
  TIMEOUT: { type: 'number', exclusiveMinimum: 0, maximum: 86_400, default: 30 },
  LOG_LEVEL: { type: 'string', enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] },
  LOG_FORMAT: { type: 'string', enum: ['json', 'pretty'] },
  CHECK_PATH: { type: 'string', pattern: '^/', default: '/' },
  TOKEN_FILE: str
}
for (const name of SECRETS) {
  SETTINGS[name] = str
  SETTINGS[`${name}_FILE`] = str
}

/** Flags for the common settings: each is the same as its variable and wins over it. */
export const FLAGS: Readonly<Record<string, { readonly setting: string, readonly value: string, readonly help: string, readonly repeatable?: true }>> = {
  '--upstream': { setting: 'UPSTREAM', value: 'URL', help: 'the API to forward to' },
  '--cluster': { setting: 'CLUSTERS', value: 'NAME=URL', help: 'a cluster, served at /clusters/NAME/ (repeatable)', repeatable: true },
  '--host': { setting: 'HOST', value: 'HOST', help: 'address to listen on (default 127.0.0.1)' },
  '--port': { setting: 'PORT', value: 'PORT', help: 'port to listen on (default 8080)' },
  '--socket': { setting: 'SOCKET', value: 'PATH', help: 'listen on a unix socket instead' },
  '--log-level': { setting: 'LOG_LEVEL', value: 'LEVEL', help: 'fatal, error, warn, info (default), debug, trace, silent' }
}

export const SCHEMA = {
  type: 'object',
  properties: Object.fromEntries(Object.entries(SETTINGS).map(([name, rule]) => [PREFIX + name, rule]))
}

/** What `npm start` with no configuration says: the settings a first setup needs, from the table. */
export function firstSetup (): string[] {
  const [grant = 'client_credentials', ...others] = grantsOf('oidc')
  const named = (names: readonly Needed[] = []): string => names.map((name) => PREFIX + name).join(', ')
  // The package's `config/` directory, where the examples are, wherever it is installed.
  const examples = join(packageRoot(), 'config') + sep
  return [
    `no configuration found: set ${PREFIX}* environment variables, write them to ./.env, or pass --env-file PATH, --config FILE or flags (bearer-proxy --help).`,
    `A first setup needs ${PREFIX}UPSTREAM (the API), ${PREFIX}TOKEN_URL or ${PREFIX}ISSUER (where tokens come from), ` +
      `and for GRANT=${grant} (the default) ${named(NEEDS.oidc[grant])}.`,
    `Other grants: ${others.map((other) => `GRANT=${other} needs ${named(NEEDS.oidc[other])}`).join('; ')}. ` +
      `With ${PREFIX}AUTH=runai, runai-apptoken or apiconnect the token endpoint is derived from ${PREFIX}UPSTREAM.`,
    `Examples to copy (in a clone or the installed package): ${examples}{keycloak,runai,runai-keycloak,apiconnect}.env.`,
    'To see the proxy work first, in a clone: npm run demo'
  ]
}
