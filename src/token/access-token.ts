import type { Secret } from '../secret.js'

/** A token's share of its lifetime that `REFRESH_SKEW` may take off at most. */
const MAX_SKEW_SHARE = 0.1
/** The background renewal comes at least this often, however long a token lasts (and a timer cannot wait longer than 2^31-1 ms). */
const MAX_RENEW_DELAY_MS = 24 * 3600_000

/** What signs a DPoP proof (RFC 9449) for a request sent with a token bound to its key, and keeps the servers' nonces. */
export interface ProofSigner {
  /** A proof for `htm` `htu` (no query), with `ath` when a token goes with it. */
  proof (htm: string, htu: string, ath?: string): string
  /** A server's latest `DPoP-Nonce`, for the next proofs to its origin. */
  nonce (origin: string, value: string): void
}

/** A token bound to a DPoP key: the key that proves it, and the token's hash (`ath`), computed once. */
export interface DPoPBinding { readonly signer: ProofSigner, readonly ath: string }

/** An access token that cannot print itself: a bearer token, or one bound to a DPoP key. */
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
  /** Bound to a DPoP key: sent as `Authorization: DPoP <token>` with a proof, else as a bearer token. */
  readonly dpop: DPoPBinding | undefined

  constructor (value: Secret, details: { obtainedAt: number, lifetimeMs: number, skewMs: number, renewAt: number, subject: string | undefined, grant: string, dpop?: DPoPBinding | undefined }) {
    const { obtainedAt, lifetimeMs } = details
    this.dpop = details.dpop
    this.#authorization = `${details.dpop === undefined ? 'Bearer' : 'DPoP'} ${value.reveal()}`
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
  reveal (): string { return this.#authorization.slice(this.#authorization.indexOf(' ') + 1) }

  /** The headers one request to `url` sends the token in: `Authorization`, and a fresh DPoP proof when the token is bound. */
  headersFor (method: string, url: URL): { authorization: string, dpop?: string } {
    if (this.dpop === undefined) return { authorization: this.#authorization }
    return { authorization: this.#authorization, dpop: this.dpop.signer.proof(method, `${url.origin}${url.pathname}`, this.dpop.ath) }
  }

  toJSON (): object { return { expiresAt: new Date(this.expiresAt).toISOString() } }
  toString (): string { return '[access token]' }
}

/** What the proxy needs of tokens; it knows nothing of how they are obtained. */
export interface TokenSource {
  /** The held token while it is valid; never starts a request. */
  current (): AccessToken | undefined
  /**
   * A valid token: the held one, the one being fetched, or a new one. `parent` (a
   * `traceparent`) is the trace a token request started now belongs to.
   */
  get (parent?: string): Promise<AccessToken>
  /** An upstream refused `token` for itself: if it is still held, the next caller gets a new one. */
  drop (token: AccessToken): void
}
