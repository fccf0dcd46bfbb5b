#!/usr/bin/env node
// npm run soak [-- --short] [-- --seconds S] [-- --revoke-in-outage]
// Steady concurrent load through the built CLI while short tokens expire, a renewal
// fails, the token endpoint disappears and then answers slowly, and tokens are
// revoked at random about once a second (with --revoke-in-outage, throughout the
// outage too: the proxy must be back as soon as the token endpoint is). All on
// 127.0.0.1, bounded in time.
// Prints its figures, then one JSON line; exits 1 when a target is missed.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:http'
import { createServer as createNetServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { generateKeyPair, jwtVerify, SignJWT } from 'jose'
import { Pool } from 'undici'

const args = process.argv.slice(2)
const SHORT = args.includes('--short')
const REVOKE_IN_OUTAGE = args.includes('--revoke-in-outage')
const option = (name, fallback) => {
  const at = args.indexOf(name)
  return at === -1 ? fallback : Number(args[at + 1])
}
/** The full soak's schedule, and a few-second variant that checks the same kinds of outcome (npm test). */
const PLAN = SHORT
  ? { seconds: option('--seconds', 8), ttl: 4, steady: 1000, revokeEveryMs: 400, outageMs: 1000, slowMs: 300, slowFor: 1500, clients: 8 }
  : { seconds: option('--seconds', 40), ttl: 12, steady: 6000, revokeEveryMs: 1000, outageMs: 3000, slowMs: 1500, slowFor: 8000, clients: 16 }
const SLOW_LIMIT_MS = 1000
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url))
const started = Date.now()
const elapsed = () => ((Date.now() - started) / 1000).toFixed(1)
const say = (line) => process.stdout.write(`[${elapsed().padStart(5)} s] ${line}\n`)

// --- The identity provider's token endpoint: RS256 JWTs of PLAN.ttl seconds, with faults on demand.
const { privateKey, publicKey } = await generateKeyPair('RS256')
const issuer = 'urn:soak:idp'
const token = {
  issued: 0,
  failed: 0,
  /** Answer the next token request with a 500. */
  failNext: false,
  slowMs: 0,
  /** [start, end] of each answer delayed on purpose: requests overlapping one may be slow. */
  slowWindows: [],
  /** Resolvers waiting for the next answer. */
  waiters: [],
  latest: undefined
}
let serial = 0
const tokenServer = createServer((req, res) => {
  req.resume()
  req.on('end', async () => {
    const arrived = Date.now()
    if (token.slowMs > 0) {
      await sleep(token.slowMs)
      token.slowWindows.push([arrived, Date.now()])
    }
    if (token.failNext) {
      token.failNext = false
      token.failed++
      res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"server_error","error_description":"renewal failed on purpose"}')
      notify('failed')
      return
    }
    const now = Math.floor(Date.now() / 1000)
    const jti = `t${++serial}`
    const accessToken = await new SignJWT({}).setProtectedHeader({ alg: 'RS256' }).setIssuer(issuer).setJti(jti)
      .setIssuedAt(now).setExpirationTime(now + PLAN.ttl).sign(privateKey)
    token.issued++
    token.latest = jti
    res.writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ access_token: accessToken, token_type: 'Bearer', expires_in: PLAN.ttl }))
    notify('issued')
  })
})
function notify (what) {
  for (const waiter of token.waiters.splice(0)) waiter(what)
}
/** Resolves with the next answer of the token endpoint ('issued' or 'failed'); rejects after `ms`. */
function nextAnswer (ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the token endpoint got no request within ${ms} ms`)), ms)
    token.waiters.push((what) => { clearTimeout(timer); resolve(what) })
  })
}

// --- The API: verifies each token's signature once, its expiry and revocation on every request.
const api = { accepted: 0, refused: 0, expired: 0, revoked: new Set(), lastAccepted: undefined }
const verified = new Map()
const apiServer = createServer((req, res) => {
  req.resume()
  const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1]
  const check = bearer === undefined ? Promise.resolve(undefined) : verified.get(bearer) ?? jwtVerify(bearer, publicKey, { issuer }).then(({ payload }) => payload, () => undefined)
  if (bearer !== undefined && !verified.has(bearer)) verified.set(bearer, check)
  check.then((claims) => {
    if (claims === undefined || api.revoked.has(claims.jti)) return refuse()
    if (claims.exp * 1000 <= Date.now()) {
      api.expired++
      return refuse()
    }
    api.accepted++
    api.lastAccepted = claims.jti
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
  })
  function refuse () {
    api.refused++
    res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer error="invalid_token"' }).end('{"code":401}')
  }
})

async function listen (server, port = 0) {
  server.listen(port, '127.0.0.1')
  await once(server, 'listening')
  return server.address().port
}
const tokenPort = await listen(tokenServer)
const apiPort = await listen(apiServer)
const probe = createNetServer()
const proxyPort = await listen(probe)
probe.close()

// --- The proxy, the built CLI, from a clean directory.
const cwd = mkdtempSync(join(tmpdir(), 'bearer-proxy-soak-'))
const proxy = spawn(cli, ['serve'], {
  cwd,
  env: {
    PATH: process.env.PATH,
    BEARER_PROXY_TOKEN_URL: `http://127.0.0.1:${tokenPort}/token`,
    BEARER_PROXY_CLIENT_ID: 'soak',
    BEARER_PROXY_CLIENT_SECRET: 'soak-secret',
    BEARER_PROXY_UPSTREAM: `http://127.0.0.1:${apiPort}`,
    BEARER_PROXY_PORT: String(proxyPort),
    BEARER_PROXY_LOG_LEVEL: 'warn'
  },
  stdio: ['ignore', 'ignore', 'inherit']
})
const proxyExit = once(proxy, 'exit')
const pool = new Pool(`http://127.0.0.1:${proxyPort}`, { connections: PLAN.clients })
const readyBy = Date.now() + 10_000
for (;;) {
  const ready = await pool.request({ path: '/-/ready', method: 'GET' }).then(async (r) => { await r.body.dump(); return r.statusCode === 200 }, () => false)
  if (ready) break
  if (Date.now() > readyBy) throw new Error('the proxy was not ready within 10 s')
  await sleep(50)
}
say(`proxy ready on 127.0.0.1:${proxyPort}; ${PLAN.clients} clients, tokens of ${PLAN.ttl} s, ${PLAN.seconds} s`)

// --- Load: closed loops of GETs and small POSTs (all replayable), every answer recorded.
const results = { total: 0, ok: 0, unavailable: 0, upstream401: 0, other: new Map(), slow: [], unavailableAt: [] }
let loading = true
async function client (id) {
  const body = JSON.stringify({ client: id, payload: 'x'.repeat(200) })
  for (let i = 0; loading; i++) {
    const post = i % 4 === 3
    const begin = Date.now()
    let status = 0
    let error
    try {
      const response = await pool.request(post
        ? { path: `/api/v1/jobs?client=${id}`, method: 'POST', body, headers: { 'content-type': 'application/json' } }
        : { path: `/api/v1/items/${i % 50}`, method: 'GET' })
      status = response.statusCode
      if (status === 200) await response.body.dump()
      else error = (await response.body.json().catch(() => ({}))).error
    } catch (failure) {
      error = failure.code ?? failure.message
    }
    const end = Date.now()
    results.total++
    if (status === 200) results.ok++
    else if (status === 503 && error === 'token_unavailable') {
      results.unavailable++
      results.unavailableAt.push(end)
    }
    else if (status === 401) results.upstream401++
    else {
      const key = `${status} ${error ?? ''}`.trim()
      results.other.set(key, (results.other.get(key) ?? 0) + 1)
    }
    if (end - begin > SLOW_LIMIT_MS) results.slow.push([begin, end])
  }
}
const clients = Array.from({ length: PLAN.clients }, (_, id) => client(id))

/** Failed token requests so far, as the proxy counts them (a token endpoint that refuses connections cannot count them). */
async function tokenFailures () {
  const text = await pool.request({ path: '/-/metrics', method: 'GET' }).then(async (r) => await r.body.text(), () => '')
  return Number(/^bearer_proxy_token_fetches_total\{credentials="default",result="failure"\} (\d+)/m.exec(text)?.[1] ?? NaN)
}

// --- Revocations: about one every PLAN.revokeEveryMs, of the token the API accepted last.
let revoking = true
let revocations = 0
const revoker = (async () => {
  while (loading) {
    await sleep(PLAN.revokeEveryMs * (0.5 + Math.random()))
    if (!revoking || !loading || api.lastAccepted === undefined || api.revoked.has(api.lastAccepted)) continue
    api.revoked.add(api.lastAccepted)
    revocations++
  }
})()

// --- The faults, in order.
const deadline = started + PLAN.seconds * 1000
const ttlMs = PLAN.ttl * 1000
await sleep(PLAN.steady)
say(`steady: ${revocations} revocations so far`)

// A renewal fails: with revocations paused, the next token request is the background renewal.
revoking = false
token.failNext = true
const failure = await nextAnswer(ttlMs * 2)
say(`a renewal ${failure === 'failed' ? 'failed on purpose' : 'was not the one that failed'}; back-off until the retry`)
const recovered = await nextAnswer(ttlMs * 2)
say(`the renewal's retry: ${recovered}`)
revoking = true

// The token endpoint disappears right after it issued a token (so the held token outlives the outage),
// then answers slowly. Revocations pause during the outage: with no token endpoint, none can be retried.
await nextAnswer(ttlMs * 2)
revoking = REVOKE_IN_OUTAGE
tokenServer.close()
tokenServer.closeAllConnections()
const downAt = Date.now()
const failuresAtDown = await tokenFailures()
say(`token endpoint down for ${PLAN.outageMs} ms${REVOKE_IN_OUTAGE ? ', revocations going on' : ''}`)
await sleep(PLAN.outageMs)
token.slowMs = PLAN.slowMs
await listen(tokenServer, tokenPort)
const backAt = Date.now()
const requestsWhileDown = (await tokenFailures()) - failuresAtDown
revoking = true
say(`token endpoint back, answering in ${PLAN.slowMs} ms for ${PLAN.slowFor} ms`)
await sleep(PLAN.slowFor)
token.slowMs = 0
say('token endpoint answering at once again')

await sleep(Math.max(1000, deadline - Date.now()))
loading = false
await Promise.all([...clients, revoker])
proxy.kill('SIGTERM')
const exitTimer = setTimeout(() => proxy.kill('SIGKILL'), 15_000)
const [exitCode, signal] = await proxyExit
clearTimeout(exitTimer)
await pool.close()
tokenServer.close()
tokenServer.closeAllConnections()
apiServer.close()
apiServer.closeAllConnections()
rmSync(cwd, { recursive: true, force: true })

// --- Figures and targets.
// Waiting on the token endpoint: while it answered slowly, or (revoked throughout) while it was down.
const waits = REVOKE_IN_OUTAGE ? [...token.slowWindows, [downAt, backAt]] : token.slowWindows
const overlapsSlowAnswer = ([begin, end]) => waits.some(([from, to]) => begin <= to && end >= from)
const unavailableAfterBack = Math.max(0, ...results.unavailableAt.filter((at) => at > backAt).map((at) => at - backAt))
const downSeconds = (backAt - downAt) / 1000
const unexplainedSlow = results.slow.filter((window) => !overlapsSlowAnswer(window)).length
const share = results.total === 0 ? 0 : results.ok / results.total
const otherCount = [...results.other.values()].reduce((a, b) => a + b, 0)
const targets = [
  ...(REVOKE_IN_OUTAGE ? [] : [['requests answered 200', `${(share * 100).toFixed(2)} %`, SHORT ? results.ok > 0 : share >= 0.99, SHORT ? '> 0' : '>= 99 %']]),
  ['other answers, not 503 token_unavailable', otherCount, otherCount === 0, '0'],
  ['upstream 401s reaching a client', results.upstream401, results.upstream401 === 0, '0'],
  ['expired tokens reaching the API', api.expired, api.expired === 0, '0'],
  [`requests over ${SLOW_LIMIT_MS} ms not waiting on the slow token endpoint`, unexplainedSlow, SHORT || unexplainedSlow === 0, SHORT ? '(not timed)' : '0'],
  ['proxy exit on SIGTERM', exitCode ?? signal, exitCode === 0, '0'],
  ['revocations made', revocations, revocations > 0, '> 0'],
  ...(REVOKE_IN_OUTAGE
    ? [
        ['requests answered 200, revoked throughout the outage', `${(share * 100).toFixed(2)} %`, SHORT ? results.ok > 0 : share >= 0.90, SHORT ? '> 0' : '>= 90 %'],
        ['503s after the token endpoint answers again', `${unavailableAfterBack} ms`, unavailableAfterBack <= 1000, '<= 1000 ms'],
        ['token requests while it was down', `${requestsWhileDown} in ${downSeconds.toFixed(1)} s`, requestsWhileDown <= Math.ceil(downSeconds) + 1, `<= ${Math.ceil(downSeconds) + 1} (about one a second)`]
      ]
    : [])
]
const seconds = (Date.now() - started) / 1000
process.stdout.write(`\nsoak: ${results.total} requests in ${seconds.toFixed(1)} s (${Math.round(results.total / seconds)} req/s), ${PLAN.clients} clients\n`)
process.stdout.write(`  200: ${results.ok}   503 token_unavailable: ${results.unavailable}   401: ${results.upstream401}   other: ${otherCount}${otherCount > 0 ? ` ${JSON.stringify(Object.fromEntries(results.other))}` : ''}\n`)
process.stdout.write(`  slower than ${SLOW_LIMIT_MS} ms: ${results.slow.length} (${results.slow.length - unexplainedSlow} while the token endpoint answered slowly)\n`)
process.stdout.write(`  token requests: ${token.issued + token.failed} (${token.issued} issued, ${token.failed} failed on purpose) for ${revocations} revocations\n`)
process.stdout.write(`  API: ${api.accepted} accepted, ${api.refused} refused (revoked or expired), ${api.expired} expired\n\n`)
let missed = 0
for (const [what, value, met, target] of targets) {
  if (!met) missed++
  process.stdout.write(`  ${met ? 'ok  ' : 'MISS'} ${what}: ${value} (target ${target})\n`)
}
const summary = {
  short: SHORT, requests: results.total, ok: results.ok, tokenUnavailable: results.unavailable, upstream401: results.upstream401,
  other: Object.fromEntries(results.other), expiredAtApi: api.expired, slow: results.slow.length, unexplainedSlow,
  tokenRequests: token.issued + token.failed, revocations, exitCode, missed,
  ...(REVOKE_IN_OUTAGE ? { unavailableAfterBackMs: unavailableAfterBack, tokenRequestsWhileDown: requestsWhileDown, downSeconds } : {})
}
process.stdout.write(`${JSON.stringify(summary)}\n`)
process.exit(missed === 0 ? 0 : 1)
