import type { Secret } from '../secret.js'

/** A token's share of its lifetime that `REFRESH_SKEW` may take off at most. */
const MAX_SKEW_SHARE = 0.1
/** The background renewal comes at least this often, however long a token lasts (and a timer cannot wait longer than 2^31-1 ms). */
const MAX_RENEW_DELAY_MS = 24 * 3600_000

/** A bearer token that cannot print itself. */
export class AccessToken {
  readonly #authorization: string
  readonly obtainedAt: number
  readonly expiresAt: number
  /** From here on the token counts as expired (`REFRESH_SKEW`, at most 10% of its lifetime). */
  readonly staleAt: number
  readonly renewAt: number
  readonly subject: string | undefined

  /** The grant that produced it: the configured one, or `refresh_token` from the previous response. */
  readonly grant: string

  constructor (value: Secret, details: { obtainedAt: number, lifetimeMs: number, skewMs: number, renewAt: number, subject: string | undefined, grant: string }) {
    const { obtainedAt, lifetimeMs } = details
    this.#authorization = `Bearer ${value.reveal()}`
    this.obtainedAt = obtainedAt
    this.expiresAt = obtainedAt + lifetimeMs
    this.staleAt = this.expiresAt - Math.min(details.skewMs, lifetimeMs * MAX_SKEW_SHARE)
    this.renewAt = obtainedAt + Math.min(lifetimeMs * details.renewAt, MAX_RENEW_DELAY_MS)
    this.subject = details.subject
    this.grant = details.grant
  }

  /** The `Authorization` header value. */
  get authorization (): string { return this.#authorization }
  /** The token alone, for `bearer-proxy token` and `TOKEN_FILE`. */
  reveal (): string { return this.#authorization.slice('Bearer '.length) }

  toJSON (): object { return { expiresAt: new Date(this.expiresAt).toISOString() } }
  toString (): string { return '[access token]' }
}

/** What the proxy needs of tokens; it knows nothing of how they are obtained. */
export interface TokenSource {
  /** The held token while it is valid; never starts a request. */
  current (): AccessToken | undefined
  /** A valid token: the held one, the one being fetched, or a new one. */
  get (): Promise<AccessToken>
  /** An upstream refused `token` for itself: if it is still held, the next caller gets a new one. */
  drop (token: AccessToken): void
}
