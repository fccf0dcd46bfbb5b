import t from 'tap'
import { Secret } from '../src/secret.js'
import { AccessToken } from '../src/token/access-token.js'
import { type HeldToken, RouteRefusals } from '../src/token/refusals.js'

/** A token source reduced to what the policy uses: the held token, and how often it was dropped. */
class Held implements HeldToken {
  token: AccessToken | undefined
  drops = 0
  #issued = 0

  constructor () { this.renew() }

  /** A new token is held, as after a token request. */
  renew (): AccessToken {
    this.#issued++
    this.token = new AccessToken(new Secret(`token-${this.#issued}`), { obtainedAt: Date.now(), lifetimeMs: 600_000, skewMs: 0, renewAt: 0.8, subject: undefined, grant: 'client_credentials' })
    return this.token
  }

  current (): AccessToken | undefined { return this.token }
  drop (token: AccessToken): void {
    if (token !== this.token) return
    this.token = undefined
    this.drops++
  }

  /** What a retry does after a drop: get a new token (one request, however many callers). */
  get (): AccessToken { return this.token ?? this.renew() }
}

/** A token source and one route on it; with `accepted`, the route has accepted the first token. */
function start (accepted: boolean): { held: Held, route: RouteRefusals, first: AccessToken } {
  const held = new Held()
  const route = new RouteRefusals(held)
  const first = held.get()
  if (accepted) route.accepted(first)
  return { held, route, first }
}

t.test('consecutive revocations: each is retried with one new token, whatever the token\'s age', async (t) => {
  const held = new Held()
  const route = new RouteRefusals(held)
  for (let i = 0; i < 5; i++) {
    const token = held.get()
    route.accepted(token)
    t.equal(route.refused(token, 0), 'retry', `revocation ${i + 1} is retried`)
    const fresh = held.get()
    t.not(fresh, token, 'with a new token')
    route.accepted(fresh)
  }
  t.equal(held.drops, 5, 'each revoked token dropped once')
})

t.test('a revocation before the route ever accepted the token is retried too', async (t) => {
  const { held, route, first } = start(false)
  t.equal(route.refused(first, 0), 'retry')
  t.equal(held.drops, 1)
})

t.test('requests in flight on a revoked token: all retried, the token dropped once', async (t) => {
  const { held, route, first: revoked } = start(true)
  const verdicts = Array.from({ length: 16 }, () => route.refused(revoked, 0))
  t.same(new Set(verdicts), new Set(['retry']), 'every one of them is sent again')
  t.equal(held.drops, 1, 'one drop, so one token request')
  const fresh = held.get()
  // The retries all carry the same new token, which the route accepts.
  for (let i = 0; i < 16; i++) route.accepted(fresh)
  t.equal(held.token, fresh)
})

t.test('a retry refused with a brand-new token: the 401 is about the request, no further token requests on that route', async (t) => {
  const { held, route, first } = start(false)
  t.equal(route.refused(first, 0), 'retry')
  const fresh = held.get()
  t.equal(route.refused(fresh, 1), 'pass', 'the retry\'s 401 is passed on')
  t.equal(held.token, fresh, 'and the new token is kept')
  for (let i = 0; i < 100; i++) t.equal(route.refused(fresh, 0), 'pass')
  t.equal(held.drops, 1, 'one token request in all')
})

t.test('a route refusing every token next to a route accepting them', async (t) => {
  const held = new Held()
  const refusing = new RouteRefusals(held)
  const accepting = new RouteRefusals(held)
  const first = held.get()
  accepting.accepted(first)
  t.equal(refusing.refused(first, 0), 'retry', 'the first 401 cannot tell and tries a new token')
  const second = held.get()
  t.equal(refusing.refused(second, 1), 'pass')
  for (let i = 0; i < 50; i++) {
    accepting.accepted(second)
    t.equal(refusing.refused(second, 0), 'pass')
  }
  t.equal(held.token, second, 'the accepting route keeps its token')
  // Renewed at 80% of its lifetime: the refusing route, which never accepted a token, still drops nothing.
  const renewed = held.renew()
  accepting.accepted(renewed)
  t.equal(refusing.refused(renewed, 0), 'pass')
  t.equal(refusing.refused(renewed, 0), 'pass')
  t.equal(held.drops, 1, 'one token request for the refusing route, ever')
  // A revocation seen on the accepting route is still retried.
  t.equal(accepting.refused(renewed, 0), 'retry')
  t.equal(held.drops, 2)
})

t.test('one path that always answers 401 on a route that accepts the token elsewhere', async (t) => {
  const { held, route, first } = start(true)
  t.equal(route.refused(first, 0), 'retry')
  const second = held.get()
  t.equal(route.refused(second, 1), 'pass')
  for (let i = 0; i < 10; i++) {
    route.accepted(second)
    t.equal(route.refused(second, 0), 'pass', 'that route\'s 401s drop nothing more for this token')
  }
  t.equal(held.drops, 1)
  // Renewed: the route's first 401 to the new token counts again.
  const renewed = held.renew()
  route.accepted(renewed)
  t.equal(route.refused(renewed, 0), 'retry')
  t.equal(held.drops, 2, 'one token request per token lifetime')
})

t.test('after a streamed request\'s 401 the next refused request is retried', async (t) => {
  const { held, route, first } = start(true)
  // The caller cannot replay the body; the verdict still drops the token.
  t.equal(route.refused(first, 0), 'retry')
  t.equal(held.token, undefined)
  const second = held.get()
  t.equal(route.refused(second, 0), 'retry', 'not passed through unretried')
})

t.test('a retry whose token the route had accepted meets a revocation: dropped and sent a last time', async (t) => {
  const { held, route, first } = start(true)
  t.equal(route.refused(first, 0), 'retry')
  const second = held.get()
  route.accepted(second)
  t.equal(route.refused(second, 1), 'retry', 'the retry\'s token was revoked in the meantime')
  t.equal(held.drops, 2)
  const third = held.get()
  route.accepted(third)
  t.equal(route.refused(third, 2), 'pass', 'never a third retry')
})

t.test('a 401 to a token already replaced is retried with the held one and drops nothing', async (t) => {
  const { held, route, first: old } = start(true)
  const renewed = held.renew()
  t.equal(route.refused(old, 0), 'retry')
  t.equal(held.token, renewed)
  t.equal(held.drops, 0)
})

t.test('distinct paths each refused: one token request per token, however many requests', async (t) => {
  const { held, route, first } = start(true)
  let token = first
  for (let i = 0; i < 200; i++) {
    if (route.refused(token, 0) === 'pass') continue
    token = held.get()
    route.refused(token, 1)
    route.accepted(token)
  }
  t.equal(held.drops, 1, '200 refused requests, one new token')
})
