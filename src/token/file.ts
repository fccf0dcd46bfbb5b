import { readFileSync, rmSync } from 'node:fs'
import { decodeJwt } from 'jose'
import type { Logger } from 'pino'
import { mkdirSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { PrivacyError, tokenFileDirectoryProblem, writePrivateFile } from '../private-file.js'
import type { TokenManager } from './manager.js'

/**
 * `TOKEN_FILE`, as Vault Agent's file sink: the current access token in a file
 * for tools that read one, written under mode 0600 to a temporary name and
 * renamed over the file (a reader never sees half a token), rewritten at each
 * renewal. The returned function stops it and removes the file.
 */
export function tokenFileSink (tokens: TokenManager, path: string, log: Logger): () => void {
  const write = ({ result }: { result: string }): void => {
    const token = tokens.current()
    if (result !== 'success' || token === undefined) return
    try {
      writePrivateFile(path, token.reveal())
      log.debug({ event: 'token_file_written', path }, `token written to ${path}`)
    } catch (error) {
      log.warn({ event: 'token_file_failed', path, error: (error as NodeJS.ErrnoException).code ?? 'error' }, `could not write the token to ${path}`)
    }
  }
  tokens.on('fetch', write)
  return () => {
    tokens.off('fetch', write)
    rmSync(path, { force: true })
  }
}

/**
 * Before `serve` listens: `TOKEN_FILE`'s directory, made (0700) when missing, and one
 * that no other user can write, or why not (a user who can write there could replace
 * the file tools trust).
 */
export function prepareTokenFile (path: string): void {
  const directory = dirname(resolve(path))
  try {
    mkdirSync(directory, { mode: 0o700 })
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw new PrivacyError(`BEARER_PROXY_TOKEN_FILE: cannot make the directory of ${path} (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  const problem = tokenFileDirectoryProblem(path, directory)
  if (problem !== undefined) throw new PrivacyError(problem)
}

/**
 * The token a running proxy keeps in `path`, unless it is missing or a JWT that
 * expires within `skewSeconds`, at most a tenth of its lifetime, as the proxy
 * counts it (a token that is not a JWT is trusted: `serve` removes the file when it stops).
 */
export function readTokenFile (path: string, skewSeconds: number): string | undefined {
  let token: string
  try {
    token = readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
  if (token === '') return undefined
  try {
    const { exp, iat } = decodeJwt(token)
    const margin = typeof exp === 'number' && typeof iat === 'number' ? Math.min(skewSeconds, (exp - iat) / 10) : skewSeconds
    if (typeof exp === 'number' && exp * 1000 <= Date.now() + margin * 1000) return undefined
  } catch {}
  return token
}
