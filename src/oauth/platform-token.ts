import { readFileSync } from 'node:fs'
import { decodeJwt } from 'jose'
import { PREFIX } from '../prefix.js'
import type { PlatformToken } from './settings.js'

/** Why a platform's token cannot be sent, naming the setting and the file, never the content. */
export class PlatformTokenError extends Error {
  constructor (token: PlatformToken, why: string) {
    super(`${PREFIX}${token.setting}: ${token.file} ${why}`)
    this.name = 'PlatformTokenError'
  }
}

/**
 * A token the platform keeps in a file, as it is now: read at every token request
 * (the kubelet swaps it through a `..data` symlink well before it expires), never
 * written, moved or deleted, as Azure's and Google's client libraries do. One that is
 * missing, unreadable, empty, not a JWT where one is needed, or expired is not sent.
 * The time of its `exp`, when it has one, goes into `expiries` (ms): the token granted
 * for it is renewed before then.
 */
export function readPlatformToken (token: PlatformToken, expiries: number[], now = Date.now()): string {
  let text: string
  try {
    text = readFileSync(token.file, 'utf8').trim()
  } catch (error) {
    throw new PlatformTokenError(token, `cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  if (text === '') throw new PlatformTokenError(token, 'is empty')
  let exp: unknown
  try {
    exp = decodeJwt(text).exp
  } catch {
    if (token.jwt) throw new PlatformTokenError(token, 'does not hold a JWT')
  }
  if (typeof exp === 'number') {
    if (exp * 1000 <= now) throw new PlatformTokenError(token, `holds a token that expired at ${new Date(exp * 1000).toISOString()}`)
    expiries.push(exp * 1000)
  }
  return text
}
