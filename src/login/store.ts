import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { Secret } from '../secret.js'

/**
 * The logins of `bearer-proxy login`: one refresh token per identity provider and
 * client, in one JSON file only its owner can read (0600, its directory 0700),
 * under the XDG config directory unless `TOKEN_STORE` says where. Every write goes
 * to a temporary file renamed over the old one, so a reader never sees half a file.
 */

interface StoreFile {
  readonly version: 1
  readonly logins: Record<string, { readonly issuer: string, readonly clientId: string, readonly refreshToken: string, readonly savedAt: string }>
}

/** Where logins are kept by default: `$XDG_CONFIG_HOME/bearer-proxy/logins.json`, else `~/.config/…`. */
export function defaultStore (env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME !== undefined && env.XDG_CONFIG_HOME !== '' ? env.XDG_CONFIG_HOME : join(homedir(), '.config')
  return join(base, 'bearer-proxy', 'logins.json')
}

const keyOf = (issuer: string, clientId: string): string => `${issuer.replace(/\/+$/, '')} ${clientId}`

function read (path: string): StoreFile {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, logins: {} }
    throw error
  }
  const parsed = JSON.parse(text) as Partial<StoreFile>
  return { version: 1, logins: typeof parsed.logins === 'object' && parsed.logins !== null ? parsed.logins : {} }
}

function write (path: string, store: StoreFile): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
  const temporary = `${path}.${process.pid}.tmp`
  rmSync(temporary, { force: true })
  writeFileSync(temporary, JSON.stringify(store, null, 2) + '\n', { mode: 0o600, flag: 'wx' })
  renameSync(temporary, path)
  // A file made by an older tool with a looser mode is tightened too.
  chmodSync(path, 0o600)
}

/** The stored refresh token of `clientId` at `issuer`, if there is one. */
export function readLogin (path: string, issuer: string, clientId: string): Secret | undefined {
  const login = read(path).logins[keyOf(issuer, clientId)]
  return typeof login?.refreshToken === 'string' && login.refreshToken !== '' ? new Secret(login.refreshToken) : undefined
}

export function saveLogin (path: string, issuer: string, clientId: string, refreshToken: Secret): void {
  const store = read(path)
  const logins = { ...store.logins, [keyOf(issuer, clientId)]: { issuer: issuer.replace(/\/+$/, ''), clientId, refreshToken: refreshToken.reveal(), savedAt: new Date().toISOString() } }
  write(path, { version: 1, logins })
}

/** Forgets the login of `clientId` at `issuer`; whether there was one. */
export function removeLogin (path: string, issuer: string, clientId: string): boolean {
  const store = read(path)
  const key = keyOf(issuer, clientId)
  if (store.logins[key] === undefined) return false
  const { [key]: _removed, ...logins } = store.logins
  write(path, { version: 1, logins })
  return true
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
