#!/usr/bin/env node
// npm run reloads [-- --reloads N]
// The built CLI under light load, reloaded N times (1000) by SIGHUP, its file changed
// each time (a route's policy and a credential set's secret, in turn): resident memory,
// file descriptors and sockets after the first few reloads and at the end, and whether
// a reload of a large file stalls the requests being served. All on 127.0.0.1, bounded.
// Prints its figures, then one JSON line; exits 1 when a target is missed.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { Pool } from 'undici'

const args = process.argv.slice(2)
const option = (name, fallback) => {
  const at = args.indexOf(name)
  return at === -1 ? fallback : Number(args[at + 1])
}
const RELOADS = option('--reloads', 1000)
const FIRST_FEW = 10
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url))
const started = Date.now()
const say = (line) => process.stdout.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`)

// A token endpoint (hour-long tokens) and an upstream that answers at once.
const tokenServer = createServer((req, res) => {
  req.resume()
  req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end('{"access_token":"reload-token","token_type":"Bearer","expires_in":3600}'))
})
const upstream = createServer((req, res) => { req.resume(); res.end('ok') })
const listen = async (server) => { server.listen(0, '127.0.0.1'); await once(server, 'listening'); return server.address().port }
const tokenPort = await listen(tokenServer)
const upstreamPort = await listen(upstream)

const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-reloads-'))
const file = join(dir, 'proxy.yaml')
const yaml = (i) => `port: 0
logLevel: info
credentials:
  one: { tokenUrl: "http://127.0.0.1:${tokenPort}/token", clientId: one, clientSecret: "secret-${i % 2 === 0 ? i : 0}" }
  two: { tokenUrl: "http://127.0.0.1:${tokenPort}/token", clientId: two, clientSecret: s2 }
routes:
  - { prefix: /one, upstream: "http://127.0.0.1:${upstreamPort}", credentials: one, denyPaths: [/deny-${i}] }
  - { prefix: /two, upstream: "http://127.0.0.1:${upstreamPort}", credentials: two }
`
writeFileSync(file, yaml(0))
// --node-flags "…": node flags of one's own, to compare (the CLI's shebang gives its own otherwise).
const flags = args.includes('--node-flags') ? args[args.indexOf('--node-flags') + 1].split(' ').filter(Boolean) : undefined
const proxy = flags === undefined
  ? spawn(cli, ['serve', '--config', file], { cwd: dir, env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'inherit'] })
  : spawn(process.execPath, [...flags, cli, 'serve', '--config', file], { cwd: dir, env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'inherit'] })
const exited = once(proxy, 'exit')
let buffered = ''
let reloaded = 0
let refusedReloads = 0
let listening
const waiters = []
proxy.stdout.setEncoding('utf8').on('data', (chunk) => {
  buffered += chunk
  const lines = buffered.split('\n')
  buffered = lines.pop()
  for (const line of lines) {
    if (line.includes('"event":"reloaded"')) reloaded++
    if (line.includes('"event":"reload_refused"')) refusedReloads++
    if (line.includes('"event":"listening"')) listening = JSON.parse(line).address
    for (const waiter of waiters.splice(0)) waiter()
  }
})
/** Resolves once `predicate` holds after a line of the proxy's log; fails after `ms`. */
async function untilLog (predicate, ms, what) {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`no ${what} within ${ms} ms`)
    await Promise.race([new Promise((resolve) => waiters.push(resolve)), sleep(Math.max(1, deadline - Date.now()))])
  }
}
await untilLog(() => listening !== undefined, 10_000, 'listening line')
const pool = new Pool(listening, { connections: 4 })

// Light load for the whole run: two clients, each a request every 5 ms.
let loading = true
const load = { ok: 0, other: 0, slowest: 0 }
const clients = Array.from({ length: 2 }, async (_, id) => {
  for (let i = 0; loading; i++) {
    const begin = Date.now()
    const answer = await pool.request({ path: `/${id === 0 ? 'one' : 'two'}/x${i % 10}`, method: 'GET' }).catch(() => undefined)
    if (answer !== undefined) await answer.body.dump()
    if (answer?.statusCode === 200) load.ok++
    else load.other++
    load.slowest = Math.max(load.slowest, Date.now() - begin)
    await sleep(5)
  }
})

const pid = proxy.pid
const rss = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024
const descriptors = () => {
  const fds = readdirSync(`/proc/${pid}/fd`)
  let sockets = 0
  for (const fd of fds) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) sockets++
    } catch {}
  }
  return { fds: fds.length, sockets }
}
const sample = () => ({ rssMiB: Math.round(rss() * 10) / 10, ...descriptors() })

let early
const reloadStarted = Date.now()
for (let i = 1; i <= RELOADS; i++) {
  writeFileSync(file, yaml(i))
  const before = reloaded
  proxy.kill('SIGHUP')
  await untilLog(() => reloaded > before, 10_000, `reload ${i}`)
  if (i === FIRST_FEW) early = sample()
  if (i % 100 === 0) say(`${i} reloads: ${JSON.stringify(sample())}`)
}
const reloadSeconds = (Date.now() - reloadStarted) / 1000
// Settled: a few seconds for the last reload's garbage, as a sidecar's memory is read between reloads.
await sleep(3000)
const end = sample()

// A large file (a 40,000-key mapping, ~0.5 MB) reloaded while requests are served: no request waits for its parse.
const large = `${yaml(RELOADS + 1)}tokenParams:\n${Array.from({ length: 40_000 }, (_, i) => `  k${i}: v${i}`).join('\n')}\n`
writeFileSync(file, large)
load.slowest = 0
const [beforeLarge, refusedBefore] = [reloaded, refusedReloads]
const largeStarted = Date.now()
proxy.kill('SIGHUP')
await untilLog(() => reloaded > beforeLarge || refusedReloads > refusedBefore, 60_000, 'the large file\'s reload or refusal')
await sleep(500)
const largeSeconds = (Date.now() - largeStarted) / 1000
const stallMs = load.slowest

loading = false
await Promise.all(clients)
await pool.close()
proxy.kill('SIGTERM')
const [exitCode] = await exited
tokenServer.close()
upstream.close()
rmSync(dir, { recursive: true, force: true })

const grew = end.rssMiB - early.rssMiB
const targets = [
  [`resident memory after ${RELOADS} reloads, over after ${FIRST_FEW}`, `${grew.toFixed(1)} MiB (${early.rssMiB} → ${end.rssMiB})`, grew <= 30, '<= 30 MiB'],
  ['file descriptors', `${early.fds} → ${end.fds}`, end.fds <= early.fds + 2, 'flat'],
  ['sockets', `${early.sockets} → ${end.sockets}`, end.sockets <= early.sockets + 2, 'flat'],
  ['requests not answered 200 during the reloads', load.other, load.other === 0, '0'],
  ['longest request while a 40,000-key file was reloaded', `${stallMs} ms`, stallMs < 1000, '< 1000 ms'],
  ['proxy exit on SIGTERM', exitCode, exitCode === 0, '0']
]
process.stdout.write(`\nreloads: ${RELOADS} in ${reloadSeconds.toFixed(1)} s (${(reloadSeconds * 1000 / RELOADS).toFixed(1)} ms each), ${load.ok} requests answered 200 meanwhile\n`)
process.stdout.write(`  the large file: ${reloaded > beforeLarge ? 'reloaded' : 'refused'} in ${largeSeconds.toFixed(1)} s\n\n`)
let missed = 0
for (const [what, value, met, target] of targets) {
  if (!met) missed++
  process.stdout.write(`  ${met ? 'ok  ' : 'MISS'} ${what}: ${value} (target ${target})\n`)
}
process.stdout.write(`${JSON.stringify({ reloads: RELOADS, early, end, grewMiB: grew, stallMs, okRequests: load.ok, other: load.other, exitCode, missed })}\n`)
process.exit(missed === 0 ? 0 : 1)
