import { accessSync, constants, existsSync, readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { Secret, type SecretSource } from '../secret.js'
import { defaultStore, peekLogin } from '../login-store.js'
import { loginIssuers, tokenEndpoint } from '../oauth/endpoints.js'
import { type ClientAuth, type Client, type ClientKey, type Credentials, type Flavour, type GrantName, type Login, type PlatformToken, type TokenEndpoint, type TokenSettings, TOKEN_TYPES } from '../oauth/settings.js'
import { tokenFileDirectoryProblem } from '../private-file.js'
import { KeyError, parseServiceAccount, readClientCertificate, readSigningKey, type ServiceAccount, signingKey } from '../keys.js'
import { trimSlashes } from '../url.js'
import { grantsOf, NEEDS, type Needed, PREFIX, type SecretName } from './settings.js'
import type { Config } from './types.js'
import { discoversClusters, isLoopback, list, parseAddress, parseClusters, parseHttpUrl } from './values.js'

/** The credential set of the top-level settings (the only one without `--config`'s `credentials:`). */
export const DEFAULT_SET = 'default'

/**
 * The cross-field rules: validated values (env-schema's output) become a `Config`,
 * and every problem found is added to `problems`, one line each. Returns nothing
 * when a problem leaves no usable configuration.
 */
/** What `interpret` knows of the input besides the values: which settings were given, and which were refused. */
export interface Input {
  /** `serve` needs somewhere to forward to; `check` and `token` do not. */
  readonly forwarding: boolean
  /** Settings set (non-empty) and valid, without the prefix. */
  readonly given: ReadonlySet<string>
  /** Settings the schema refused: rules that depend on them are not applied, so each problem is reported once, at its cause. */
  readonly invalid: ReadonlySet<string>
  /**
   * With named credential sets (`--config`'s `credentials:`), the top level holds no
   * credentials of its own: this set stands for them, and what a flavour needs is not asked.
   */
  readonly token?: TokenSettings | undefined
}

/** A client that signs an assertion with its own key (RFC 7523), rather than sending a secret (or someone else's assertion, `ASSERTION_FILE`). */
const signs = (auth: ClientAuth, grant: GrantName, given: ReadonlySet<string>): boolean => auth === 'private_key_jwt' || (grant === 'jwt_bearer' && !given.has('ASSERTION_FILE'))
/** A client that proves who it is by its TLS certificate (RFC 8705 §2). */
const byCertificate = (auth: ClientAuth): boolean => auth === 'tls_client_auth' || auth === 'self_signed_tls_client_auth'

/** Settings that only some flavours, grants or client authentications read: set elsewhere, they would be silently ignored. */
const READ_BY: ReadonlyArray<[string, (flavour: Flavour, grant: GrantName, auth: ClientAuth, given: ReadonlySet<string>) => boolean, string]> = [
  ['REALM', (flavour, grant) => flavour === 'oidc' || flavour === 'apiconnect' || (flavour === 'runai' && grant === 'login'), 'AUTH=oidc (Keycloak), apiconnect, or runai with GRANT=login'],
  ['ISSUER', (flavour) => flavour === 'oidc', 'AUTH=oidc'],
  ['SCOPE', (flavour) => flavour === 'oidc', 'AUTH=oidc'],
  ['AUDIENCE', (flavour) => flavour === 'oidc', 'AUTH=oidc'],
  ['TOKEN_PARAMS', (flavour) => flavour === 'oidc', 'AUTH=oidc'],
  ['CLIENT_AUTH', (flavour) => flavour === 'oidc', 'AUTH=oidc'],
  ['APP_NAME', (flavour) => flavour === 'runai-apptoken', 'AUTH=runai-apptoken'],
  ['RUNAI_TOKEN_API', (flavour, grant) => flavour === 'runai' && grant !== 'app_token' && grant !== 'login', 'AUTH=runai with a grant other than app_token and login (which only /api/v1/token has)'],
  ['USERNAME', (_flavour, grant) => grant === 'password', 'GRANT=password'],
  ['PASSWORD', (_flavour, grant) => grant === 'password', 'GRANT=password'],
  ['REFRESH_TOKEN', (_flavour, grant) => grant === 'refresh_token', 'GRANT=refresh_token'],
  ['API_KEY', (_flavour, grant) => grant === 'api_key', 'GRANT=api_key'],
  ['CLIENT_KEY_FILE', (_flavour, grant, auth, given) => signs(auth, grant, given) || given.has('CLIENT_CERT_FILE'), 'CLIENT_AUTH=private_key_jwt, GRANT=jwt_bearer or CLIENT_CERT_FILE'],
  ['CLIENT_KEY_ID', (_flavour, grant, auth, given) => signs(auth, grant, given), 'CLIENT_AUTH=private_key_jwt or GRANT=jwt_bearer'],
  ['CLIENT_ASSERTION_AUDIENCE', (_flavour, grant, auth, given) => signs(auth, grant, given) || auth === 'client_secret_jwt', 'CLIENT_AUTH=private_key_jwt or client_secret_jwt, or GRANT=jwt_bearer'],
  ['SERVICE_ACCOUNT_FILE', (flavour, grant) => flavour === 'oidc' && grant === 'jwt_bearer', 'AUTH=oidc GRANT=jwt_bearer'],
  ['CLIENT_SECRET', (flavour, _grant, auth, given) => flavour !== 'oidc' || (auth !== 'private_key_jwt' && !byCertificate(auth) && !given.has('CLIENT_ASSERTION_FILE')), 'a client that proves who it is with a secret (CLIENT_AUTH other than private_key_jwt, tls_client_auth, self_signed_tls_client_auth, and no CLIENT_ASSERTION_FILE)'],
  ['SUBJECT_TOKEN_FILE', (_flavour, grant) => grant === 'token_exchange', 'GRANT=token_exchange'],
  ['SUBJECT_TOKEN_TYPE', (flavour, grant) => flavour === 'oidc' && grant === 'token_exchange', 'AUTH=oidc GRANT=token_exchange'],
  ['REQUESTED_TOKEN_TYPE', (flavour, grant) => flavour === 'oidc' && grant === 'token_exchange', 'AUTH=oidc GRANT=token_exchange'],
  ['RESOURCE', (flavour) => flavour === 'oidc', 'AUTH=oidc'],
  ['DPOP', (flavour) => flavour === 'oidc' || flavour === 'runai', 'AUTH=oidc or runai (OAuth 2.0 token endpoints)'],
  ['CLIENT_ASSERTION_FILE', (flavour) => flavour === 'oidc', 'AUTH=oidc'],
  ['ASSERTION_FILE', (flavour, grant) => flavour === 'oidc' && grant === 'jwt_bearer', 'AUTH=oidc GRANT=jwt_bearer'],
  ['UPSTREAM_CLIENT_CERT', (_flavour, _grant, _auth, given) => given.has('CLIENT_CERT_FILE'), 'CLIENT_CERT_FILE'],
  ['LOGIN_PORT', (_flavour, grant) => grant === 'login', 'GRANT=login (bearer-proxy login)'],
  ['LOGIN_TIMEOUT', (_flavour, grant) => grant === 'login', 'GRANT=login (bearer-proxy login)']
]

export function interpret (raw: Record<string, unknown>, input: Input, problems: string[]): Config | undefined {
  const { forwarding, given } = input
  const get = (name: string): string | undefined => raw[PREFIX + name] as string | undefined
  const flag = (name: string): boolean => raw[PREFIX + name] === true
  const number = (name: string): number => raw[PREFIX + name] as number
  const url = (name: string): URL | undefined => {
    const value = get(name)
    return value === undefined ? undefined : parseHttpUrl(value, `${PREFIX}${name}`, problems)
  }
  const secret = (name: SecretName): SecretSource | undefined => secretSource(name, get(name), get(`${name}_FILE`), problems)

  const flavour = get('AUTH') as Flavour
  const grants = grantsOf(flavour)
  const auth = get('CLIENT_AUTH') as ClientAuth
  // A service account's key file says who the client is, with which key, and where tokens come from.
  const account = get('SERVICE_ACCOUNT_FILE') === undefined ? undefined : serviceAccount(get('SERVICE_ACCOUNT_FILE') as string, problems)
  const store = get('TOKEN_STORE') ?? defaultStore()
  // A file that can only be one grant's says which, as a service account's key file does.
  const implied: GrantName | undefined = given.has('SERVICE_ACCOUNT_FILE') || given.has('ASSERTION_FILE') ? 'jwt_bearer' : given.has('SUBJECT_TOKEN_FILE') ? 'token_exchange' : undefined
  const grant = (get('GRANT') as GrantName | undefined) ?? implied ?? (storedLogin(flavour, get, given, store) ? 'login' : grants[0] as GrantName)
  // With AUTH or GRANT refused, what they would require is not known: report nothing that follows from them.
  const unsure = input.invalid.has('AUTH') || input.invalid.has('GRANT')
  const flavourProblems = unsure || input.token !== undefined ? [] : problems
  if (!grants.includes(grant)) flavourProblems.push(`${PREFIX}GRANT: ${grant} is not a grant of AUTH=${flavour} (use ${grants.join(', ')})`)
  for (const [name, reads, who] of READ_BY) {
    if (given.has(name) || given.has(`${name}_FILE`)) {
      if (!reads(flavour, grant, auth, given)) flavourProblems.push(`${PREFIX}${name}: does nothing with AUTH=${flavour} GRANT=${grant} (only ${who} reads it); remove it`)
    }
  }
  for (const name of ['CLIENT_ID', 'CLIENT_KEY_FILE'] as const) {
    if (given.has('SERVICE_ACCOUNT_FILE') && given.has(name)) {
      flavourProblems.push(`${PREFIX}${name}: does nothing with ${PREFIX}SERVICE_ACCOUNT_FILE (its client_email and private_key are the client's); remove it`)
    }
  }
  if (get('CLIENT_ASSERTION_AUDIENCE') === 'issuer' && !given.has('ISSUER')) {
    flavourProblems.push(`${PREFIX}CLIENT_ASSERTION_AUDIENCE: issuer needs ${PREFIX}ISSUER (the assertion's aud)`)
  }
  if (given.has('TOKEN_URL') && given.has('ISSUER')) {
    flavourProblems.push(`${PREFIX}ISSUER: does nothing when ${PREFIX}TOKEN_URL is set (the token endpoint is not discovered then); set one of them`)
  }

  const upstream = url('UPSTREAM')
  const clusters = parseClusters(get('CLUSTERS'), problems)
  // Run:ai lists its clusters: read from the control plane unless CLUSTERS names them (or asks with `auto`).
  const discoverClusters = discoversClusters(get('CLUSTERS'), flavour) && upstream !== undefined
  if (get('CLUSTERS') === 'auto' && upstream === undefined) {
    problems.push(`${PREFIX}CLUSTERS: auto reads the clusters from the Run:ai control plane at ${PREFIX}UPSTREAM, which is not set`)
  }
  if (forwarding && upstream === undefined && clusters.size === 0) {
    problems.push(`${PREFIX}UPSTREAM: required (the API to forward to), or ${PREFIX}CLUSTERS`)
  }

  // A key that only proves the client's TLS certificate is checked with the certificate.
  const clientKey = signs(auth, grant, given) ? keyOf(get('CLIENT_KEY_FILE'), get('SERVICE_ACCOUNT_FILE'), account, get('CLIENT_KEY_ID'), problems) : undefined
  const values: Record<Needed, string | SecretSource | undefined> = {
    CLIENT_ID: get('CLIENT_ID') ?? account?.clientEmail,
    CLIENT_KEY_FILE: clientKey?.file ?? get('CLIENT_KEY_FILE'),
    CLIENT_CERT_FILE: get('CLIENT_CERT_FILE'),
    CLIENT_SECRET: secret('CLIENT_SECRET'),
    USERNAME: get('USERNAME'),
    PASSWORD: secret('PASSWORD'),
    REFRESH_TOKEN: secret('REFRESH_TOKEN'),
    API_KEY: secret('API_KEY'),
    SUBJECT_TOKEN_FILE: get('SUBJECT_TOKEN_FILE')
  }
  // The platform's tokens, read at every token request: at start, one that cannot be read stops it.
  for (const name of ['SUBJECT_TOKEN_FILE', 'CLIENT_ASSERTION_FILE', 'ASSERTION_FILE']) {
    const file = get(name)
    if (file !== undefined) readable(file, `${PREFIX}${name}`, problems)
  }
  const dpop = ({ false: 'off', true: 'on', required: 'required' } as const)[get('DPOP') as 'false' | 'true' | 'required']
  const dpopKeyFile = get('DPOP_KEY_FILE')
  if (dpopKeyFile !== undefined && dpop === 'off') flavourProblems.push(`${PREFIX}DPOP_KEY_FILE: does nothing without ${PREFIX}DPOP=true or required; remove it`)
  else if (dpopKeyFile !== undefined) dpopKey(dpopKeyFile, problems)
  const federated = given.has('CLIENT_ASSERTION_FILE')
  if (federated && given.has('CLIENT_AUTH')) flavourProblems.push(`${PREFIX}CLIENT_AUTH: does nothing with ${PREFIX}CLIENT_ASSERTION_FILE (the file's assertion is how the client proves who it is); remove it`)
  const subjectType = tokenType(get('SUBJECT_TOKEN_TYPE') ?? 'jwt', 'SUBJECT_TOKEN_TYPE', problems)
  const requestedTokenType = get('REQUESTED_TOKEN_TYPE') === undefined ? undefined : tokenType(get('REQUESTED_TOKEN_TYPE') as string, 'REQUESTED_TOKEN_TYPE', problems)
  // The client's own authentication adds to what the grant needs (a key instead of a secret, or the secret as an HMAC key).
  const needs = new Set(NEEDS[flavour][grant] ?? [])
  if (flavour === 'oidc' && (auth === 'private_key_jwt' || byCertificate(auth))) needs.delete('CLIENT_SECRET')
  if (flavour === 'oidc' && auth !== 'client_secret_post' && auth !== 'client_secret_basic') {
    needs.add('CLIENT_ID')
    if (auth === 'private_key_jwt') needs.add('CLIENT_KEY_FILE')
    else if (byCertificate(auth)) needs.add('CLIENT_CERT_FILE').add('CLIENT_KEY_FILE')
    else needs.add('CLIENT_SECRET')
  }
  if (given.has('CLIENT_CERT_FILE')) needs.add('CLIENT_KEY_FILE')
  // A federated assertion is the client's proof, and names the client (Keycloak needs no client id; Entra takes one).
  if (federated) for (const name of ['CLIENT_SECRET', 'CLIENT_ID'] as const) needs.delete(name)
  // Someone else's assertion is the grant: the client's key signs nothing, and a client is optional.
  if (grant === 'jwt_bearer' && given.has('ASSERTION_FILE')) for (const name of ['CLIENT_KEY_FILE', 'CLIENT_ID'] as const) needs.delete(name)
  for (const name of needs) {
    if (values[name] !== undefined) continue
    // Reported at their cause: the key file, or the service account's file.
    if ((name === 'CLIENT_KEY_FILE' && given.has(name)) || ((name === 'CLIENT_ID' || name === 'CLIENT_KEY_FILE') && given.has('SERVICE_ACCOUNT_FILE'))) continue
    const file = name === 'CLIENT_ID' || name === 'USERNAME' || name.endsWith('_FILE') ? '' : ` (or ${PREFIX}${name}_FILE)`
    const why = needs.has(name) && !(NEEDS[flavour][grant] ?? []).includes(name) ? ` CLIENT_AUTH=${auth}` : ''
    flavourProblems.push(`${PREFIX}${name}: required${file} for AUTH=${flavour} GRANT=${grant}${why}`)
  }

  const tokenUrl = url('TOKEN_URL') ?? (account === undefined ? undefined : parseHttpUrl(account.tokenUri, `${PREFIX}SERVICE_ACCOUNT_FILE (token_uri)`, problems))
  // A certificate is only presented in a TLS handshake: over plain http the client could not prove who it is.
  const issuer = url('ISSUER')
  const plain = [tokenUrl, issuer].find((candidate) => candidate?.protocol === 'http:')
  if (byCertificate(auth) && plain !== undefined) {
    flavourProblems.push(`${PREFIX}CLIENT_AUTH: ${auth} proves the client by its TLS certificate, which a plain http token endpoint never asks for (${plain.origin}); use https`)
  }
  // A service account file that cannot be read has said so; the endpoint it would have named is not asked for too.
  const endpointProblems = given.has('SERVICE_ACCOUNT_FILE') && account === undefined ? [] : flavourProblems
  const derived = tokenEndpoint({ flavour, grant, tokenUrl, issuer, upstream, realm: get('REALM'), runaiApi: get('RUNAI_TOKEN_API') })
  if (typeof derived === 'string') endpointProblems.push(derived)
  const endpoint = typeof derived === 'string' ? undefined : derived
  // A login is kept per issuer, whose discovery also names the authorization endpoint.
  const discovery = grant === 'login' ? loginIssuers(urlSettings(flavour, get), endpoint) : undefined
  if (grant === 'login' && endpoint !== undefined && discovery === undefined) {
    flavourProblems.push(flavour === 'runai'
      ? `${PREFIX}REALM: required for AUTH=runai GRANT=login (the realm of Run:ai's sign-in, under General | Settings, Researcher Authentication)`
      : `${PREFIX}GRANT: login needs ${PREFIX}ISSUER (or ${PREFIX}REALM with ${PREFIX}UPSTREAM) rather than ${PREFIX}TOKEN_URL: the login is kept per issuer, and its discovery names where to log in`)
  }
  const login = discovery === undefined
    ? undefined
    : { store, issuer: trimSlashes((discovery[0] as URL).href), discovery, port: number('LOGIN_PORT'), timeout: number('LOGIN_TIMEOUT') }
  const platform = (name: string, jwt: boolean): PlatformToken | undefined => get(name) === undefined ? undefined : { file: get(name) as string, setting: name, jwt }
  const credentials = credentialsOf(grant, values, { login, federated, subjectType, subject: platform('SUBJECT_TOKEN_FILE', subjectType !== TOKEN_TYPES.access_token), assertion: platform('ASSERTION_FILE', true) })
  const params = tokenParams(get('TOKEN_PARAMS'), problems)

  const host = get('HOST') as string
  if (host.includes('/') || /\s/.test(host)) problems.push(`${PREFIX}HOST: not a host name or address`)
  const inboundKey = secret('INBOUND_KEY')
  const allowAnonymous = flag('ALLOW_ANONYMOUS')
  if (get('SOCKET') === undefined && !isLoopback(host) && inboundKey === undefined && !allowAnonymous) {
    problems.push(`${PREFIX}HOST: ${host} is not a loopback address; anyone who reaches it could use your credentials. ` +
      `Set ${PREFIX}INBOUND_KEY (clients then send Proxy-Authorization: Bearer <key>) or ${PREFIX}ALLOW_ANONYMOUS=true`)
  }
  const caFile = get('CA_FILE')
  if (caFile !== undefined) readable(caFile, `${PREFIX}CA_FILE`, problems)
  const tokenFile = get('TOKEN_FILE')
  if (tokenFile !== undefined && forwarding) writableDirectory(tokenFile, problems)

  const timeout = number('TIMEOUT')
  if (input.token === undefined && (unsure || credentials === undefined || endpoint === undefined)) return undefined
  const token: TokenSettings = input.token ?? {
    flavour,
    credentials: credentials as Credentials,
    endpoint: endpoint as TokenEndpoint,
    clientAuth: auth,
    clientKey,
    clientAssertion: platform('CLIENT_ASSERTION_FILE', true),
    requestedTokenType,
    resource: get('RESOURCE'),
    dpop,
    dpopKeyFile,
    assertionAudience: get('CLIENT_ASSERTION_AUDIENCE') as TokenSettings['assertionAudience'],
    serviceAccount: account !== undefined,
    clientCert: certificateOf(get('CLIENT_CERT_FILE'), get('CLIENT_KEY_FILE'), problems),
    upstreamClientCert: flag('UPSTREAM_CLIENT_CERT'),
    realm: get('REALM'),
    scope: get('SCOPE'),
    audience: get('AUDIENCE'),
    params,
    appName: get('APP_NAME'),
    refreshSkew: number('REFRESH_SKEW'),
    timeout,
    allowHttpTokenEndpoint: flag('ALLOW_HTTP_TOKEN_ENDPOINT')
  }
  return {
    tokenSettings: token,
    credentialSets: new Map([[DEFAULT_SET, token]]),
    prefixRoutes: [],
    upstream,
    clusters,
    discoverClusters,
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
    logLevel: get('LOG_LEVEL'),
    logFormat: get('LOG_FORMAT') as Config['logFormat'],
    checkPath: get('CHECK_PATH') as string,
    tokenFile
  }
}

/** The credentials of `grant`, when the table's required settings are all there. */
/** What the grant sends; a login also where it is kept (known once the issuer is). */
interface GrantInputs {
  readonly login: Login | undefined
  /** `CLIENT_ASSERTION_FILE`: the client may go unnamed. */
  readonly federated: boolean
  readonly subject: PlatformToken | undefined
  readonly subjectType: string
  readonly assertion: PlatformToken | undefined
}

function credentialsOf (grant: GrantName, values: Record<Needed, string | SecretSource | undefined>, { login, federated, subject, subjectType, assertion }: GrantInputs): Credentials | undefined {
  const text = (name: Needed): string | undefined => typeof values[name] === 'string' ? values[name] : undefined
  const source = (name: Needed): SecretSource | undefined => typeof values[name] === 'object' ? values[name] : undefined
  const id = text('CLIENT_ID')
  const clientSecret = source('CLIENT_SECRET')
  const client: Client | undefined = id === undefined ? undefined : { id, secret: clientSecret }
  const username = text('USERNAME')
  const password = source('PASSWORD')
  const refreshToken = source('REFRESH_TOKEN')
  const apiKey = source('API_KEY')
  switch (grant) {
    case 'client_credentials':
      return id === undefined && !federated ? undefined : { grant, client }
    case 'jwt_bearer':
      return id === undefined && assertion === undefined ? undefined : { grant, client, assertion }
    case 'token_exchange':
      return subject === undefined ? undefined : { grant, subject, subjectType, client }
    case 'login':
      return id === undefined || login === undefined ? undefined : { grant, client: { id, secret: clientSecret }, login }
    case 'app_token':
      return id === undefined || clientSecret === undefined ? undefined : { grant, client: { id, secret: clientSecret } }
    case 'password':
      return username === undefined || password === undefined ? undefined : { grant, username, password, client }
    case 'refresh_token':
      return refreshToken === undefined ? undefined : { grant, refreshToken, client }
    case 'api_key':
      return apiKey === undefined ? undefined : { grant, apiKey, client }
  }
}

function secretSource (name: SecretName, value: string | undefined, file: string | undefined, problems: string[]): SecretSource | undefined {
  if (value !== undefined && file !== undefined) {
    // Reported once, here: the setting is there, just twice.
    problems.push(`${PREFIX}${name} and ${PREFIX}${name}_FILE: set one of them, not both`)
    return { kind: 'value', secret: new Secret(value) }
  }
  if (file !== undefined) {
    readable(file, `${PREFIX}${name}_FILE`, problems)
    return { kind: 'file', path: file }
  }
  return value === undefined ? undefined : { kind: 'value', secret: new Secret(value) }
}

/** A service account's key file, read and checked at start (its key by `keyOf`). */
function serviceAccount (path: string, problems: string[]): ServiceAccount | undefined {
  try {
    return parseServiceAccount(readFileSync(path, 'utf8'))
  } catch (error) {
    problems.push(`${PREFIX}SERVICE_ACCOUNT_FILE: ${error instanceof KeyError ? error.message : `cannot read ${path} (${(error as NodeJS.ErrnoException).code ?? 'error'})`}`)
    return undefined
  }
}

/**
 * Whether `bearer-proxy login` stored a login for the configured issuer and client,
 * with no other credential configured: then it is the grant, without `GRANT=login`.
 * The store is only looked at (`peekLogin`): a check changes nothing on the disk.
 */
function storedLogin (flavour: Flavour, get: (name: string) => string | undefined, given: ReadonlySet<string>, store: string): boolean {
  const other = ['CLIENT_SECRET', 'USERNAME', 'PASSWORD', 'REFRESH_TOKEN', 'API_KEY', 'CLIENT_KEY_FILE', 'SERVICE_ACCOUNT_FILE', 'GRANT', 'TOKEN_URL']
  const issuer = loginIssuers(urlSettings(flavour, get), undefined)?.[0]
  const clientId = get('CLIENT_ID')
  if (issuer === undefined || clientId === undefined || other.some((name) => given.has(name) || given.has(`${name}_FILE`))) return false
  return peekLogin(store, trimSlashes(issuer.href), clientId)
}

/** The settings a login's issuer is found from, each URL only when it is one (a bad one is reported where it is read). */
function urlSettings (flavour: Flavour, get: (name: string) => string | undefined): Parameters<typeof loginIssuers>[0] {
  return { flavour, realm: get('REALM'), upstream: safeUrl(get('UPSTREAM')), issuer: safeUrl(get('ISSUER')), tokenUrl: safeUrl(get('TOKEN_URL')) }
}

/** A URL setting's value, or nothing when it is absent or not a URL (reported where it is read). */
function safeUrl (value: string | undefined): URL | undefined {
  try {
    return value === undefined ? undefined : new URL(value)
  } catch {
    return undefined
  }
}

/** The client certificate of mutual TLS, checked now against its key. */
function certificateOf (certFile: string | undefined, keyFile: string | undefined, problems: string[]): TokenSettings['clientCert'] {
  if (certFile === undefined || keyFile === undefined) return undefined
  // A key file that cannot be used has been reported once, at its cause.
  if (problems.some((problem) => problem.startsWith(`${PREFIX}CLIENT_KEY_FILE:`))) return undefined
  try {
    readClientCertificate(certFile, keyFile)
  } catch (error) {
    const { code, path } = error as NodeJS.ErrnoException
    problems.push(error instanceof KeyError
      ? `${PREFIX}${error.setting ?? 'CLIENT_CERT_FILE'}: ${error.message}`
      : `${PREFIX}${path === keyFile ? 'CLIENT_KEY_FILE' : 'CLIENT_CERT_FILE'}: cannot read ${path ?? certFile} (${code ?? 'error'})`)
  }
  return { cert: certFile, key: keyFile }
}

/** The key that signs assertions: checked now, so that a key that cannot be used stops the start, naming its setting. */
function keyOf (keyFile: string | undefined, accountFile: string | undefined, account: ServiceAccount | undefined, id: string | undefined, problems: string[]): ClientKey | undefined {
  const [file, format, name] = keyFile !== undefined ? [keyFile, 'key' as const, 'CLIENT_KEY_FILE'] : [accountFile, 'service_account' as const, 'SERVICE_ACCOUNT_FILE']
  if (file === undefined || (format === 'service_account' && account === undefined)) return undefined
  try {
    readSigningKey(file, format)
    return { file, format, id }
  } catch (error) {
    problems.push(`${PREFIX}${name}: ${error instanceof KeyError ? `${format === 'service_account' ? 'its private_key ' : ''}${error.message}` : `cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? 'error'})`}`)
    return undefined
  }
}

function readable (path: string, name: string, problems: string[]): void {
  try {
    accessSync(path, constants.R_OK)
  } catch (error) {
    problems.push(`${name}: cannot read ${path} (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
  }
}

function writableDirectory (file: string, problems: string[]): void {
  const directory = dirname(resolve(file))
  // A missing directory is made by serve, mode 0700, in a parent that must exist (a shared volume's root may be everyone's).
  const missing = !existsSync(directory)
  try {
    accessSync(missing ? dirname(directory) : directory, constants.W_OK)
  } catch (error) {
    problems.push(`${PREFIX}TOKEN_FILE: cannot write in the directory of ${file} (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
    return
  }
  if (missing) return
  // Another user who can write there could replace the token file that tools trust.
  const problem = tokenFileDirectoryProblem(file, directory)
  if (problem !== undefined) problems.push(problem)
}

/** A DPoP key, checked now as a client's key is: a file that cannot be used stops the start, naming its setting. */
function dpopKey (file: string, problems: string[]): void {
  try {
    signingKey(readFileSync(file, 'utf8'))
  } catch (error) {
    problems.push(`${PREFIX}DPOP_KEY_FILE: ${error instanceof KeyError ? error.message : `cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? 'error'})`}`)
  }
}

/** A token type of RFC 8693: a short name (jwt, id_token, access_token) or a URN. */
function tokenType (value: string, name: string, problems: string[]): string {
  const type = TOKEN_TYPES[value] ?? value
  if (!type.startsWith('urn:')) problems.push(`${PREFIX}${name}: ${Object.keys(TOKEN_TYPES).join(', ')} or a token type URN (urn:ietf:params:oauth:token-type:…)`)
  return type
}

function tokenParams (value: string | undefined, problems: string[]): Array<[string, string]> {
  const params: Array<[string, string]> = []
  for (const [key, param] of new URLSearchParams(value ?? '')) {
    if (key === '') problems.push(`${PREFIX}TOKEN_PARAMS: expected k=v&k2=v2`)
    else params.push([key, param])
  }
  return params
}

function adminAddress (value: string | undefined, problems: string[]): { host: string, port: number } | undefined {
  if (value === undefined) return undefined
  const address = parseAddress(value)
  if (typeof address === 'object') return address
  problems.push(`${PREFIX}ADMIN_ADDRESS: ${address}`)
  return undefined
}
