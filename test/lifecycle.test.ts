import { once } from 'node:events'
import t from 'tap'
import { request } from 'undici'
import { baseEnv, startApiOf, startIdentity, startTestProxy, afterFetch } from './helpers/stack.js'

t.test('200 concurrent cold requests make exactly one token request and all succeed', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  idp.mode = 'slow'
  idp.slowMs = 300
  const { url } = await startTestProxy(t, baseEnv(idp, api))
  const statuses = await Promise.all(Array.from({ length: 200 }, async (_, i) => {
    const response = await request(`${url}/cold/${i}`)
    await response.body.dump()
    return response.statusCode
  }))
  t.same(new Set(statuses), new Set([200]))
  t.equal(idp.tokenRequests, 1)
  t.equal(api.seen.length, 200)
})

t.test('renewal under load and while idle: no request fails', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 2 })
  const api = await startApiOf(t, idp)
  const { url, proxy, logs } = await startTestProxy(t, baseEnv(idp, api))
  await afterFetch(proxy.tokens, () => proxy.tokens.current() !== undefined, 5000, 'the first token')
  const failures: number[] = []
  let sent = 0
  const until = Date.now() + 3500
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (Date.now() < until) {
      const response = await request(`${url}/load`)
      await response.body.dump()
      sent++
      if (response.statusCode !== 200) failures.push(response.statusCode)
    }
  }))
  t.same(failures, [], `${sent} requests under load, none failed`)
  t.ok(logs.events('token_renewed').length >= 1, 'renewed during the load')
  // JWT `exp` has whole seconds, so a 2 s token can lapse just before its renewal: such a
  // request gets a 401, a new token and one retry, and the client never sees the 401.
  t.equal(api.seen.filter((seen) => seen.authorized).length, sent, 'every request reached the API with a valid token')

  const renewals = logs.events('token_renewed').length
  await afterFetch(proxy.tokens, () => logs.events('token_renewed').length > renewals, 5000, 'a renewal while idle')
  const after = await request(`${url}/after-idle`)
  t.equal(after.statusCode, 200)
  await after.body.dump()
})

t.test('a token revoked early: 401, a new token, one retry with the POST body replayed', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 300 })
  const api = await startApiOf(t, idp)
  const { url, proxy, logs } = await startTestProxy(t, baseEnv(idp, api))
  const warm = await request(`${url}/warm`)
  await warm.body.dump()
  const { jti } = api.seen[0] as { jti: string }
  api.revoked.add(jti)

  const body = JSON.stringify({ job: 'train', gpus: 4 })
  const response = await request(`${url}/api/v1/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
  t.equal(response.statusCode, 200)
  const echo = await response.body.json() as { bodyLength: number }
  t.equal(echo.bodyLength, body.length)
  const [rejected, retried] = api.seen.slice(1)
  t.equal(rejected?.authorized, false)
  t.equal(retried?.authorized, true)
  t.equal(retried?.body, body, 'the same body was sent again')
  t.not(retried?.jti, jti, 'with a new token')
  t.equal(idp.tokenRequests, 2)
  t.equal(logs.events('token_rejected').length, 1)
  t.equal(api.seen.length, 3, 'exactly one retry')
  t.ok(proxy.tokens.current())
})

t.test('a body too large to buffer streams and is not retried: the 401 passes through, the next request gets a new token', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 300 })
  const api = await startApiOf(t, idp)
  const { url } = await startTestProxy(t, baseEnv(idp, api))
  await (await request(`${url}/warm`)).body.dump()
  api.revoked.add(api.seen[0]?.jti as string)
  const large = Buffer.alloc(1024 * 1024 + 10, 7)
  const streamed = await request(`${url}/upload`, { method: 'PUT', body: large })
  t.equal(streamed.statusCode, 401)
  t.match(await streamed.body.json(), { code: 401 }, 'the upstream answer, unchanged')
  t.equal(api.seen.at(-1)?.bodyLength, large.length)
  t.equal(api.seen.length, 2, 'not retried')

  // The next request uses a new token.
  const next = await request(`${url}/next`)
  t.equal(next.statusCode, 200)
  await next.body.dump()
  t.equal(idp.tokenRequests, 2)
})

t.test('consecutive revocations a moment apart: each is retried with a new token, GET and POST alike', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 300 })
  const api = await startApiOf(t, idp)
  const { url, logs } = await startTestProxy(t, baseEnv(idp, api))
  await (await request(`${url}/warm`)).body.dump()
  const body = JSON.stringify({ job: 'train' })
  for (let i = 0; i < 4; i++) {
    // Revoke the token the API last accepted, then call at once: no time for any cooldown to pass.
    api.revoked.add(api.seen.filter((seen) => seen.authorized).at(-1)?.jti as string)
    const post = i % 2 === 1
    const response = await request(`${url}/api/v1/jobs/${i}`, post ? { method: 'POST', body, headers: { 'content-type': 'application/json' } } : {})
    t.equal(response.statusCode, 200, `revocation ${i + 1} (${post ? 'POST' : 'GET'}) is retried`)
    const echo = await response.body.json() as { bodyLength: number }
    t.equal(echo.bodyLength, post ? body.length : 0)
  }
  t.equal(idp.tokenRequests, 5, 'one token request per revocation')
  t.equal(logs.events('token_rejected').length, 4)
  t.equal(api.seen.filter((seen) => !seen.authorized).length, 4, 'each revoked token reached the API once')
})

t.test('requests in flight when their token is revoked: all retried with the same one new token', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 300 })
  const api = await startApiOf(t, idp)
  const { url } = await startTestProxy(t, baseEnv(idp, api))
  await (await request(`${url}/warm`)).body.dump()
  const revoked = api.seen[0]?.jti as string
  api.revoked.add(revoked)
  const body = 'x'.repeat(1000)
  const responses = await Promise.all(Array.from({ length: 24 }, async (_, i) => {
    const response = await request(`${url}/inflight/${i}`, { method: 'PUT', body })
    return { status: response.statusCode, echo: await response.body.json() as { bodyLength: number } }
  }))
  t.same(new Set(responses.map((response) => response.status)), new Set([200]))
  t.ok(responses.every((response) => response.echo.bodyLength === 1000), 'every body replayed whole')
  t.equal(idp.tokenRequests, 2, 'exactly one new token')
  const retried = api.seen.filter((seen) => seen.authorized && seen.url.startsWith('/inflight/'))
  t.equal(retried.length, 24)
  t.equal(new Set(retried.map((seen) => seen.jti)).size, 1, 'all with the same new token')
  t.not(retried[0]?.jti, revoked)
})

t.test('a cluster that refuses every token next to an API that accepts them: one token request, no drop for the other, none at renewal', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 4 })
  const api = await startApiOf(t, idp)
  // Another identity provider's API: it trusts none of our tokens.
  const stranger = await startIdentity(t, { accessTokenTtl: 300 })
  const untrusting = await startApiOf(t, stranger)
  const { url, proxy, logs } = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_CLUSTERS: `other=${untrusting.url}` })
  await (await request(`${url}/warm`)).body.dump()
  const statuses: number[] = []
  const both = async (i: number): Promise<void> => {
    const refused = await request(`${url}/clusters/other/api/v1/x${i % 3}`)
    statuses.push(refused.statusCode)
    t.match(await refused.body.json(), { code: 401 }, 'the upstream\'s own 401, unchanged')
    const accepted = await request(`${url}/api/v1/y`)
    statuses.push(accepted.statusCode)
    await accepted.body.dump()
  }
  for (let i = 0; i < 20; i++) await both(i)
  t.equal(idp.tokenRequests, 2, 'the first refusal tried one new token, then none')
  t.equal(new Set(api.seen.slice(1).map((seen) => seen.jti)).size, 1, 'the accepting API kept one token throughout')

  // Renewed at 80% of its lifetime: the refusing cluster, which never accepted a token, costs nothing more.
  await once(proxy.tokens, 'fetch', { signal: AbortSignal.timeout(10_000) })
  for (let i = 0; i < 20; i++) await both(i)
  t.same(statuses, Array.from({ length: 80 }, (_, i) => i % 2 === 0 ? 401 : 200))
  t.equal(idp.tokenRequests, 3, 'the renewal only')
  t.equal(logs.events('token_rejected').length, 1)
  t.equal(untrusting.seen.length, 41, 'the retry once, then each request once')
})

t.test('after a streamed body\'s 401, the next refused request is still retried', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 300 })
  const api = await startApiOf(t, idp)
  const { url } = await startTestProxy(t, baseEnv(idp, api))
  api.routes.set('/always-401', (_req, res) => { res.writeHead(401).end('no') })
  await (await request(`${url}/warm`)).body.dump()
  api.revoked.add(api.seen[0]?.jti as string)
  const streamed = await request(`${url}/always-401`, { method: 'PUT', body: Buffer.alloc(1024 * 1024 + 1, 1) })
  t.equal(streamed.statusCode, 401, 'too large to replay: the 401 passes')
  await streamed.body.dump()
  const before = api.seen.length
  const next = await request(`${url}/always-401`)
  t.equal(next.statusCode, 401)
  await next.body.dump()
  t.equal(api.seen.length - before, 2, 'sent, refused, retried with a new token')
  t.not(api.seen.at(-1)?.jti, api.seen.at(-2)?.jti)
  t.equal(idp.tokenRequests, 3)
})

t.test('a token the upstream keeps refusing is not fetched again and again', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 300 })
  const api = await startApiOf(t, idp)
  const { url } = await startTestProxy(t, baseEnv(idp, api))
  api.routes.set('/always-401', (_req, res) => { res.writeHead(401).end('no') })
  for (let i = 0; i < 5; i++) {
    const response = await request(`${url}/always-401`)
    t.equal(response.statusCode, 401)
    await response.body.dump()
  }
  t.equal(idp.tokenRequests, 2, 'one new token after the first 401, then the 401s pass through')
})
