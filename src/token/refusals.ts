import type { AccessToken } from './access-token.js'

/** What the caller does with an upstream's 401: send the request again with a new token, or pass the 401 on. */
export type Verdict = 'retry' | 'pass'

/** A request is sent at most this many times more; the second retry only when the first one's token was itself revoked. */
const MAX_RETRIES = 2

/** The token source as the policy sees it: which token is held, and dropping it. */
export interface HeldToken {
  current (): AccessToken | undefined
  drop (token: AccessToken): void
}

/**
 * What one route's 401s mean for the token (README, "How tokens are handled"):
 *
 * - a 401 to a token that is no longer held (renewed, or dropped by a request in
 *   flight beside this one) is retried with the token held now, and drops nothing;
 * - the route's first 401 to the held token drops it, whatever its age, and the
 *   request is retried with a new one: every revocation costs one token request;
 * - a 401 to a retry whose token the route never accepted is about the request, not
 *   the token (a path the account may not use, an upstream that does not trust the
 *   issuer): it is passed on, and so are the route's further 401s to that token.
 *   Until the route accepts a token again, its 401s to tokens it never accepted
 *   drop nothing either: a route that refuses every token costs one token request,
 *   and never takes the token away from the routes that accept it;
 * - a 401 to a retry whose token the route had accepted is a revocation in the
 *   meantime: the token is dropped and the request is sent a last time.
 *
 * So a route costs at most one token request per token it is given. State is kept
 * for the held token only: nothing grows with traffic.
 */
export class RouteRefusals {
  readonly #tokens: HeldToken
  /** The held token this route has seen, with what the route did with it. */
  #token: AccessToken | undefined
  #accepted = false
  #refused = false
  /** This route refused a brand-new token and has accepted none since. */
  #refusesFresh = false

  constructor (tokens: HeldToken) {
    this.#tokens = tokens
  }

  /** The upstream answered something other than 401 to `token`. */
  accepted (token: AccessToken): void {
    if (this.#token === token && this.#accepted) return
    if (token !== this.#tokens.current()) return
    this.#track(token)
    this.#accepted = true
    this.#refusesFresh = false
  }

  /** The upstream answered 401 to `token` on the request's `attempt` (0 for the first send). */
  refused (token: AccessToken, attempt: number): Verdict {
    const retry: Verdict = attempt < MAX_RETRIES ? 'retry' : 'pass'
    if (token !== this.#tokens.current()) return retry
    this.#track(token)
    if (attempt > 0 && !this.#accepted) {
      this.#refused = true
      this.#refusesFresh = true
      return 'pass'
    }
    if (this.#refused || (this.#refusesFresh && !this.#accepted)) return 'pass'
    this.#refused = true
    this.#tokens.drop(token)
    return retry
  }

  #track (token: AccessToken): void {
    if (this.#token === token) return
    this.#token = token
    this.#accepted = false
    this.#refused = false
  }
}
