import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs'
import type { JsonWebKey } from 'node:crypto'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { PREFIX } from './prefix.js'
import { checkPrivateFile, PrivacyError, privateDirectory, writePrivateFile } from './private-file.js'
import { Secret } from './secret.js'
import { trimSlashes } from './url.js'

/**
 * The logins of `bearer-proxy login`: one refresh token per identity provider and
 * client, in one JSON file only its owner can read (0600, its directory 0700),
 * under the XDG config directory unless `TOKEN_STORE` says where. Every write goes
 * to a temporary file renamed over the old one, so a reader never sees half a file.
 * A directory or file that others could read or write is tightened when it is this
 * user's and refused when it is another's; a file that is not a store is reported,
 * never quoted.
 */

interface StoreFile {
  readonly version: 1
  readonly logins: Record<string, { readonly issuer: string, readonly clientId: string, readonly refreshToken: string, readonly savedAt: string, readonly dpopKey?: JsonWebKey }>
}

/** Where logins are kept by default: `$XDG_CONFIG_HOME/bearer-proxy/logins.json`, else `~/.config/…`. */
export function defaultStore (env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME !== undefined && env.XDG_CONFIG_HOME !== '' ? env.XDG_CONFIG_HOME : join(homedir(), '.config')
  return join(base, 'bearer-proxy', 'logins.json')
}

const keyOf = (issuer: string, clientId: string): string => `${trimSlashes(issuer)} ${clientId}`

const NOT_A_STORE = (path: string, why: string): PrivacyError =>
  new PrivacyError(`the login store ${path} ${why}: move it away or choose another ${PREFIX}TOKEN_STORE (bearer-proxy login writes a new one)`)

function read (path: string): StoreFile {
  let text: string
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, logins: {} }
    throw error
  }
  try {
    privateDirectory(dirname(path), 'the login store')
    // The file opened is the file checked: its owner and mode by the descriptor.
    const stats = fstatSync(fd)
    if (!stats.isFile()) throw NOT_A_STORE(path, 'is not a file')
    checkPrivateFile(stats, path, 'the login store')
    text = readFileSync(fd, 'utf8')
  } finally {
    closeSync(fd)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    // JSON.parse's message quotes the text it stopped at.
    throw NOT_A_STORE(path, 'is not JSON')
  }
  const store = parsed as Partial<StoreFile> | null
  if (typeof store !== 'object' || store === null || store.version !== 1 || typeof store.logins !== 'object' || store.logins === null || Array.isArray(store.logins)) {
    throw NOT_A_STORE(path, 'is not a login store of bearer-proxy')
  }
  return { version: 1, logins: store.logins }
}

function write (path: string, store: StoreFile): void {
  privateDirectory(dirname(path), 'the login store')
  writePrivateFile(path, JSON.stringify(store, null, 2) + '\n')
}

/** The stored refresh token of `clientId` at `issuer`, if there is one. */
export function readLogin (path: string, issuer: string, clientId: string): Secret | undefined {
  const login = read(path).logins[keyOf(issuer, clientId)]
  return typeof login?.refreshToken === 'string' && login.refreshToken !== '' ? new Secret(login.refreshToken) : undefined
}

/**
 * Keeps a login's refresh token; `dpopKey` is the private key its refresh token is
 * bound to (DPoP, RFC 9449 §5), when the login made one. Without it, a key kept
 * with the login before stays (a rotated refresh token is bound to the same key).
 */
export function saveLogin (path: string, issuer: string, clientId: string, refreshToken: Secret, dpopKey?: JsonWebKey | null): void {
  const store = read(path)
  const key = dpopKey === undefined ? store.logins[keyOf(issuer, clientId)]?.dpopKey : dpopKey ?? undefined
  const logins = { ...store.logins, [keyOf(issuer, clientId)]: { issuer: trimSlashes(issuer), clientId, refreshToken: refreshToken.reveal(), savedAt: new Date().toISOString(), ...(key === undefined ? {} : { dpopKey: key }) } }
  write(path, { version: 1, logins })
}

/** The DPoP key a login's refresh token is bound to, when the login kept one. */
export function readLoginKey (path: string, issuer: string, clientId: string): JsonWebKey | undefined {
  const key = read(path).logins[keyOf(issuer, clientId)]?.dpopKey
  return typeof key === 'object' && key !== null ? key : undefined
}

/** Forgets the login of `clientId` at `issuer` (and its DPoP key); whether there was one. */
export function removeLogin (path: string, issuer: string, clientId: string): boolean {
  const store = read(path)
  const key = keyOf(issuer, clientId)
  if (store.logins[key] === undefined) return false
  const { [key]: _removed, ...logins } = store.logins
  write(path, { version: 1, logins })
  return true
}

/**
 * Whether a login of `clientId` at `issuer` is stored, only looked at: nothing is
 * tightened or refused here (the configuration check calls this; using the login
 * reads the store with every check).
 */
export function peekLogin (path: string, issuer: string, clientId: string): boolean {
  try {
    const login = (JSON.parse(readFileSync(path, 'utf8')) as Partial<StoreFile> | null)?.logins?.[keyOf(issuer, clientId)]
    return typeof login?.refreshToken === 'string' && login.refreshToken !== ''
  } catch {
    return false
  }
}

/** The refresh token a renewal sends: the stored login's, read at each request (another process may have rotated it). */
export function storedRefreshToken (login: { readonly store: string, readonly issuer: string }, clientId: string): Secret {
  const stored = readLogin(login.store, login.issuer, clientId)
  if (stored === undefined) throw new NoStoredLogin(login.issuer, clientId)
  return stored
}

/** No login is stored for the configured issuer and client. */
export class NoStoredLogin extends Error {
  constructor (issuer: string, clientId: string) {
    super(`no login is stored for client ${clientId} at ${issuer}: run bearer-proxy login`)
    this.name = 'NoStoredLogin'
  }
}
