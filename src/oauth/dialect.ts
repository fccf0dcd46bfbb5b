import type { Client, TokenSettings } from './settings.js'
import { Secret, type SecretSource } from '../secret.js'
import { errorCode, prose } from './redact.js'

/** One request to a token endpoint, ready to send. */
export interface TokenRequest {
  readonly url: URL
  readonly headers: Record<string, string>
  readonly body: string
  /** When the platform's tokens it carries expire (ms): the token granted for them is renewed before the first. */
  readonly expiries?: readonly number[]
}

/** What a token endpoint granted. */
export interface TokenResponse {
  readonly accessToken: Secret
  /** Seconds, when the response says so. */
  readonly expiresIn: number | undefined
  readonly refreshToken: Secret | undefined
  /** `token_type` DPoP (RFC 9449 §5): the token is bound to the key the request's proof named. */
  readonly bound?: boolean
}

/** A token flavour: data plus two functions. */
export interface Dialect {
  /**
   * `refresh` is the refresh token of the last response, when the next request should
   * use it. Asynchronous where the request carries a signed assertion.
   */
  buildRequest (settings: TokenSettings, endpoint: URL, refresh: Secret | undefined): TokenRequest | Promise<TokenRequest>
  /** Reads a 2xx body; throws a `TokenResponseError` when it is not a usable grant. */
  readResponse (body: unknown): TokenResponse
}

/** The client's secret, which the configuration requires for every grant that sends one. */
export function secretOf (client: Client): SecretSource {
  if (client.secret === undefined) throw new UnsupportedGrant('this', 'without a client secret')
  return client.secret
}

/** A grant the flavour does not speak; the configuration's table never lets one through. */
export class UnsupportedGrant extends Error {
  constructor (flavour: string, grant: string) {
    super(`AUTH=${flavour} has no grant ${grant}`)
    this.name = 'UnsupportedGrant'
  }
}

/** Why a response cannot be used: its body is unreadable, or it reads as a grant that cannot be trusted. */
export type TokenResponseProblem = 'unreadable_body' | 'unusable_grant'

export class TokenResponseError extends Error {
  readonly code: TokenResponseProblem

  constructor (message: string, code: TokenResponseProblem = 'unusable_grant') {
    super(message)
    this.name = 'TokenResponseError'
    this.code = code
  }
}

export const JSON_HEADERS = { 'content-type': 'application/json', accept: 'application/json' }

export function requireString (body: unknown, field: string): string {
  const value = asObject(body)[field]
  if (typeof value !== 'string' || value === '') throw new TokenResponseError(`response has no ${field}`)
  return value
}

export function optionalSecret (body: unknown, field: string): Secret | undefined {
  const value = asObject(body)[field]
  return typeof value === 'string' && value !== '' ? new Secret(value) : undefined
}

/** `expires_in` as a positive number of seconds (some servers send it as a string). */
export function optionalSeconds (body: unknown, field: string): number | undefined {
  const value = asObject(body)[field]
  const seconds = typeof value === 'string' && value.trim() !== '' ? Number(value) : value
  if (seconds === undefined || seconds === null) return undefined
  // Any positive number, however large (some services say 1e13 for a token that does not expire; JSON's 1e400 is Infinity).
  if (typeof seconds !== 'number' || Number.isNaN(seconds) || seconds <= 0) {
    throw new TokenResponseError(`response has an invalid ${field}`)
  }
  return seconds
}

export function asObject (body: unknown): Record<string, unknown> {
  return typeof body === 'object' && body !== null && !Array.isArray(body) ? body as Record<string, unknown> : {}
}

/**
 * An error body reduced to its code and a short description in prose: OAuth
 * `{error, error_description}`, Run:ai `{code, message}`, API Connect
 * `{status, message: [...]}`. Nothing else is kept, and nothing that does not read
 * as prose (see `redact.ts`); known secrets are removed before this is called.
 */
export function summariseError (body: unknown, status?: number): string | undefined {
  const object = asObject(body)
  const text = (value: unknown): string | undefined => {
    if (typeof value === 'string' && value !== '') return value
    if (Array.isArray(value)) return text(value.filter((item) => typeof item === 'string').join('; '))
    return undefined
  }
  // Run:ai repeats the HTTP status as `code`: say it once.
  const code = errorCode(object.error) ?? (object.code === status ? undefined : errorCode(object.code))
  const description = text(object.error_description) ?? text(object.message)
  const message = description === undefined ? undefined : prose(description)
  if (code !== undefined && message !== undefined && message !== '') return `${code} (${message})`
  return code ?? (message === '' ? undefined : message)
}

/** The field names of a response, for a trace line: only names that look like field names. */
export function fieldNames (body: unknown): string[] {
  return Object.keys(asObject(body)).slice(0, 20).map((name) => /^[A-Za-z_]{1,40}$/.test(name) ? name : '[…]')
}
