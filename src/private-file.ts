import { randomBytes } from 'node:crypto'
import { chmodSync, closeSync, fchmodSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, type Stats, statSync, writeSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'

/**
 * Files that hold a token only their owner may read (the login store, `TOKEN_FILE`),
 * and the directories they live in.
 */

/** Why a file or directory that must stay private cannot be used; the message names the path, never its content. */
export class PrivacyError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'PrivacyError'
  }
}

const ours = (): number | undefined => process.getuid?.()

/** Whether a user other than this one (or root, who can anyway) owns `stats`. */
function foreign (stats: Stats): boolean {
  const uid = ours()
  return uid !== undefined && stats.uid !== uid && stats.uid !== 0
}

/**
 * Why another user could replace what is in `directory`, or undefined: it is theirs,
 * or group or others may write it without the sticky bit (with it, as in /tmp, no one
 * else can remove or rename this user's files there).
 */
export function othersCanWrite (directory: string): string | undefined {
  let stats: Stats
  try {
    stats = statSync(directory)
  } catch (error) {
    return `cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`
  }
  if (ours() === undefined) return undefined
  if (foreign(stats)) return 'belongs to another user'
  if ((stats.mode & 0o022) !== 0 && (stats.mode & 0o1000) === 0) return `can be written by other users (mode ${(stats.mode & 0o777).toString(8)})`
  return undefined
}

/** Why `TOKEN_FILE`'s directory cannot hold it (another user could replace the file tools trust), or undefined. */
export function tokenFileDirectoryProblem (file: string, directory: string): string | undefined {
  const unsafe = othersCanWrite(directory)
  return unsafe === undefined ? undefined : `BEARER_PROXY_TOKEN_FILE: the directory of ${file} ${unsafe}; use a directory only this user can write (or one with the sticky bit, as /tmp)`
}

/**
 * `directory`, made (0700) when missing, and only its owner's: one that group or
 * others may read or write is tightened to 0700 when it is this user's, and refused
 * when it is another's.
 */
export function privateDirectory (directory: string, what: string): void {
  try {
    mkdirSync(directory, { recursive: true, mode: 0o700 })
  } catch (error) {
    throw new PrivacyError(`${what}: cannot make its directory ${directory} (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  const stats = statSync(directory)
  if (ours() === undefined || (stats.mode & 0o077) === 0) return
  if (foreign(stats)) throw new PrivacyError(`${what}: its directory ${directory} belongs to another user and others can use it; choose a directory of your own`)
  chmodSync(directory, 0o700)
}

/**
 * A private file that exists may be read: one that belongs to another user is
 * refused, one that group or others may read or write is tightened to 0600.
 */
export function checkPrivateFile (stats: Stats, path: string, what: string): void {
  if (ours() === undefined) return
  if (foreign(stats)) throw new PrivacyError(`${what} ${path} belongs to another user: it is not read`)
  if ((stats.mode & 0o077) !== 0) chmodSync(path, 0o600)
}

/**
 * `content` as the whole of `path`, mode 0600: written to a new file of a random
 * name beside it (created exclusively, so a link planted there is never followed),
 * its mode set on the descriptor before any byte is written, synced, then renamed
 * over `path` (a reader never sees half of it, and no path is changed after the rename).
 */
export function writePrivateFile (path: string, content: string): void {
  const temporary = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`)
  const fd = openSync(temporary, 'wx', 0o600)
  try {
    fchmodSync(fd, 0o600)
    writeSync(fd, content)
    fsyncSync(fd)
  } catch (error) {
    closeSync(fd)
    rmSync(temporary, { force: true })
    throw error
  }
  closeSync(fd)
  try {
    renameSync(temporary, path)
  } catch (error) {
    rmSync(temporary, { force: true })
    throw error
  }
}
