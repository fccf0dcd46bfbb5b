#!/usr/bin/env node
// npm run bench [-- --json FILE] [-- --duration S] [-- --runtimes machine,22,24] [-- --footprint-only]
//   [-- --node-flags "FLAGS"]: the runtimes' node flags instead of the shebang's, to try others
// The upstream alone and through bearer-proxy, the bare stack (Fastify + @fastify/http-proxy),
// node:http and undici pipes, nginx, HAProxy, Caddy and Go's ReverseProxy (those installed),
// in one run, every server in its own process, all on 127.0.0.1. autocannon is the load.
// Then bearer-proxy's own footprint: spawn to /-/ready, idle and peak RSS, 256 MiB transfers;
// and that footprint again on each runtime of --runtimes (the machine's Node and the LTS lines
// the image may ship, fetched by runtimes.mjs), beside the bare stack on the same runtime.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import autocannon from 'autocannon'
import { Client, request } from 'undici'
import { freePort, startPeers } from './peers.mjs'
import { runtimes } from './runtimes.mjs'

const args = process.argv.slice(2)
const option = (name, fallback) => {
  const at = args.indexOf(name)
  return at === -1 ? fallback : args[at + 1]
}
const DURATION = Number(option('--duration', '8'))
const JSON_FILE = option('--json', undefined)
const RUNTIMES = option('--runtimes', 'machine,22,24').split(',').filter(Boolean)
const FOOTPRINT_ONLY = args.includes('--footprint-only')
const CONNECTIONS = 50
/** Sequential requests per target in the one-client latency pass, in 4 alternating rounds. */
const SEQUENTIAL = 4000
const here = fileURLToPath(new URL('.', import.meta.url))
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url))
const TARGETS = { idleRss: 65, peakRss: 85, transferRss: 110, readyMs: 300, addedP50Us: 200, vsFloor: 1.0, vsGo: 0.75 }
/** On the Node the image ships (its Dockerfile's FROM): what a user who runs the image gets. */
const IMAGE_TARGETS = { idleRss: 65, peakRss: 100, transferRss: 128, readyMs: 400 }
/** The node flags of dist/cli.js's shebang, given to node when the bench runs it on another runtime. */
const NODE_FLAGS = option('--node-flags', undefined)?.split(/\s+/).filter(Boolean) ??
  /^#!.*?\bnode\s+(.*?)\s*--\s*$/.exec(readFileSync(cli, 'utf8').split('\n')[0])?.[1].split(/\s+/) ?? []
/** The major version of the Node the image runs: its Dockerfile's last `FROM node:<major>`. */
const IMAGE_NODE = [...readFileSync(join(here, '..', 'Dockerfile'), 'utf8').matchAll(/^FROM node:(\d+)/gm)].at(-1)?.[1]

/** A child process running one of the servers in servers.mjs; resolves with its port once it listens. */
async function serve (role, env = {}, node = process.execPath) {
  const child = spawn(node, [join(here, 'servers.mjs'), role], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  const [line] = await once(child.stdout, 'data')
  const port = Number(/listening (\d+)/.exec(String(line))?.[1])
  child.stdout.resume()
  return { child, port }
}

/** The process's own memory: anonymous pages (V8's heap, malloc), without the node binary's file-backed pages. */
const anonymous = (pid) => Number(/Anonymous:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1]) / 1024
const status = (pid, field) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
/** CPU time (user + system, µs) of a process and its children that are still running (nginx's worker). */
function cpuTime (pid) {
  let children = []
  try { children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number) } catch {}
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(fields[11]) + Number(fields[12])) * (1e6 / TICKS) + children.reduce((sum, child) => sum + cpuTime(child), 0)
}
const TICKS = 100 // USER_HZ, the unit of /proc/<pid>/stat's times on Linux

/**
 * bearer-proxy as users start it (dist/cli.js by its shebang, with its node flags), or on
 * another `node` with the shebang's flags; resolves at /-/ready 200, with the time it took.
 */
async function startBearerProxy (tokenPort, upstreamPort, extra = {}, node = undefined) {
  const port = await freePort()
  const began = process.hrtime.bigint()
  const child = spawn(node ?? cli, node === undefined ? ['serve'] : [...NODE_FLAGS, '--', cli, 'serve'], {
    env: {
      ...process.env,
      BEARER_PROXY_TOKEN_URL: `http://127.0.0.1:${tokenPort}/token`,
      BEARER_PROXY_ALLOW_HTTP_TOKEN_ENDPOINT: 'true',
      BEARER_PROXY_CLIENT_ID: 'bench',
      BEARER_PROXY_CLIENT_SECRET: 'bench-secret',
      BEARER_PROXY_UPSTREAM: `http://127.0.0.1:${upstreamPort}`,
      BEARER_PROXY_PORT: String(port),
      BEARER_PROXY_LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn',
      ...extra
    },
    stdio: ['ignore', 'ignore', 'inherit']
  })
  // Bounded: 10 s, polled every 5 ms.
  for (let i = 0; i < 2000; i++) {
    const ready = await fetch(`http://127.0.0.1:${port}/-/ready`).then(async (response) => { await response.arrayBuffer(); return response.status }, () => 0)
    if (ready === 200) return { child, port, readyMs: Number(process.hrtime.bigint() - began) / 1e6 }
    if (child.exitCode !== null) break
    await sleep(5)
  }
  child.kill()
  throw new Error('bearer-proxy did not become ready within 10 s')
}

/** Load on one target; with its pid, also the CPU it spent per request (µs), which a slow spell of the shared cores moves less than req/s. */
async function load (port, path, duration, pid) {
  const before = pid === undefined ? 0 : cpuTime(pid)
  const result = await autocannon({ url: `http://127.0.0.1:${port}${path}`, connections: CONNECTIONS, duration, pipelining: 1 })
  const cpu = pid === undefined ? 0 : (cpuTime(pid) - before) / result.requests.total
  return { rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, cpu, errors: result.errors + result.timeouts + result.non2xx }
}

/** One client, one kept-alive connection, one request at a time: each request's time, in µs. */
async function sequential (client, count) {
  const times = []
  for (let i = 0; i < count; i++) {
    const began = process.hrtime.bigint()
    const { statusCode, body } = await client.request({ path: '/small', method: 'GET' })
    await body.dump()
    if (statusCode !== 200) throw new Error(`answered ${statusCode}`)
    times.push(Number(process.hrtime.bigint() - began) / 1000)
  }
  return times
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]

/** Three spawns to /-/ready (the first token from the local token server included), on `node` or by the shebang: the times, and the third, kept running. */
async function startThrice (tokenPort, upstreamPort, node = undefined) {
  const ready = []
  for (let i = 0; ; i++) {
    const proxy = await startBearerProxy(tokenPort, upstreamPort, {}, node)
    ready.push(proxy.readyMs)
    if (i === 2) return { proxy, ready }
    proxy.child.kill()
    await once(proxy.child, 'exit')
  }
}

/** 256 MiB down and 256 MiB up through the proxy on `port`: whether each arrived whole. */
async function transfer (port) {
  const down = await request(`http://127.0.0.1:${port}/huge`)
  let received = 0
  for await (const chunk of down.body) received += chunk.length
  const chunk = Buffer.alloc(64 * 1024, 'y')
  const up = await request(`http://127.0.0.1:${port}/sink`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(4096 * chunk.length) },
    body: Readable.from((function * () { for (let i = 0; i < 4096; i++) yield chunk })())
  })
  const sent = Number(await up.body.text())
  return { received, sent }
}

/**
 * bearer-proxy's footprint on one runtime, as the main run measures it on the machine's:
 * spawn to /-/ready (median of 3), RSS settled 15 s after ready, peak after 1 KiB and 64 KiB
 * loads (two rounds each, alternating with the bare stack on the same runtime, which gives
 * the req/s and CPU ratios), and peak after 256 MiB each way.
 */
async function footprint (node, upstreamPort, tokenPort) {
  const { proxy, ready } = await startThrice(tokenPort, upstreamPort, node)
  await sleep(15_000)
  const idle = status(proxy.child.pid, 'VmRSS')
  const own = anonymous(proxy.child.pid)
  const floor = await serve('fastify-http-proxy', { UPSTREAM_PORT: String(upstreamPort) }, node)
  const ratios = {}
  for (const [path, label] of [['/small', '1 KiB'], ['/large', '64 KiB']]) {
    await load(proxy.port, path, 2)
    await load(floor.port, path, 2)
    const mine = []
    const bare = []
    for (let round = 0; round < 2; round++) {
      mine.push(await load(proxy.port, path, DURATION / 2, proxy.child.pid))
      bare.push(await load(floor.port, path, DURATION / 2, floor.child.pid))
    }
    const sum = (list, field) => list.reduce((total, one) => total + one[field], 0)
    ratios[label] = { rps: sum(mine, 'rps') / sum(bare, 'rps'), cpu: sum(mine, 'cpu') / sum(bare, 'cpu'), cpuUs: Math.round(sum(mine, 'cpu') / 2) }
  }
  const peak = status(proxy.child.pid, 'VmHWM')
  const moved = await transfer(proxy.port)
  const transferPeak = status(proxy.child.pid, 'VmHWM')
  for (const child of [proxy.child, floor.child]) child.kill()
  return { readyMs: median(ready), ready, idle, own, peak, transferPeak, ratios, whole: moved.received === 4096 * 65536 && moved.sent === 4096 * 65536 }
}

/** The footprint on each runtime of --runtimes, side by side, and the image's Node against its targets. */
async function footprintReport (upstreamPort, tokenPort) {
  const measured = []
  for (const runtime of runtimes(RUNTIMES)) {
    if (runtime.skipped !== undefined) {
      measured.push({ ...runtime })
      continue
    }
    process.stderr.write(`  footprint on ${runtime.name}\n`)
    measured.push({ ...runtime, ...await footprint(runtime.node, upstreamPort, tokenPort) })
  }
  const ran = measured.filter((one) => one.skipped === undefined)
  const image = ran.find((one) => one.version.startsWith(`v${IMAGE_NODE}.`))
  const cell = (text) => String(text).padStart(18)
  const lines = [`\nfootprint by runtime (the image runs Node ${IMAGE_NODE}: its column is checked against its targets)`]
  lines.push(`${''.padEnd(34)}${ran.map((one) => cell(one.name.replace(/^machine \((.*)\)$/, '$1 (here)'))).join('')}  target on the image's Node`)
  const row = (what, value, target, ok) => {
    const verdict = image === undefined || target === '' ? '' : `${target} ${ok(image) ? 'met' : 'MISSED'}`
    lines.push(`${what.padEnd(34)}${ran.map((one) => cell(value(one))).join('')}  ${verdict}`.trimEnd())
  }
  row('spawn to /-/ready (median of 3)', (one) => `${Math.round(one.readyMs)} ms`, `≤ ${IMAGE_TARGETS.readyMs} ms`, (one) => one.readyMs <= IMAGE_TARGETS.readyMs)
  row('idle RSS, settled (own)', (one) => `${one.idle.toFixed(1)} (${one.own.toFixed(1)}) MiB`, `≤ ${IMAGE_TARGETS.idleRss} MiB`, (one) => one.idle <= IMAGE_TARGETS.idleRss)
  row('peak RSS under load', (one) => `${one.peak.toFixed(1)} MiB`, `≤ ${IMAGE_TARGETS.peakRss} MiB`, (one) => one.peak <= IMAGE_TARGETS.peakRss)
  row('peak RSS after 256 MiB each way', (one) => `${one.transferPeak.toFixed(1)} MiB`, `≤ ${IMAGE_TARGETS.transferRss} MiB`, (one) => one.transferPeak <= IMAGE_TARGETS.transferRss)
  for (const label of ['1 KiB', '64 KiB']) {
    row(`${label} req/s vs bare stack`, (one) => `${one.ratios[label].rps.toFixed(2)}x`, '', () => true)
    row(`${label} CPU/request vs bare stack`, (one) => `${one.ratios[label].cpu.toFixed(2)}x (${one.ratios[label].cpuUs} µs)`, '', () => true)
  }
  for (const one of measured.filter((some) => some.skipped !== undefined)) lines.push(`${one.name}: ${one.skipped}, skipped`)
  for (const one of ran.filter((some) => !some.whole)) lines.push(`${one.name}: the 256 MiB transfers did not arrive whole`)
  return { lines, measured }
}

// --- Start everything --------------------------------------------------------
const upstream = await serve('upstream')
const tokens = await serve('token')
if (FOOTPRINT_ONLY) {
  const { lines, measured } = await footprintReport(upstream.port, tokens.port)
  process.stdout.write(`bearer-proxy footprint by runtime, ${new Date().toISOString().slice(0, 10)}${lines.join('\n')}\n`)
  if (JSON_FILE !== undefined) writeFileSync(JSON_FILE, JSON.stringify({ runtimes: measured }, null, 2) + '\n')
  for (const child of [upstream.child, tokens.child]) child.kill()
  process.exit(0)
}
const floors = [
  ['fastify+http-proxy', await serve('fastify-http-proxy', { UPSTREAM_PORT: String(upstream.port) })],
  ['undici pipe', await serve('undici-pipe', { UPSTREAM_PORT: String(upstream.port) })],
  ['node:http pipe', await serve('node-pipe', { UPSTREAM_PORT: String(upstream.port) })]
]
const peers = await startPeers(upstream.port)

// Start-up: three spawns to /-/ready (the first token from the local token server included); the third stays for the rest.
const { proxy, ready: readyTimes } = await startThrice(tokens.port, upstream.port)
// Idle: 1 s after ready, and settled: V8 frees the start-up's garbage by itself (its memory
// reducer) some 8 s into a quiet process, which is where a sidecar spends its life.
await sleep(1000)
const startedRss = status(proxy.child.pid, 'VmRSS')
await sleep(14_000)
const idleRss = status(proxy.child.pid, 'VmRSS')
const idleAnonymous = anonymous(proxy.child.pid)

// With DPoP (RFC 9449): a proof signed for every request, the cost of sender-constrained tokens.
const dpop = await startBearerProxy(tokens.port, upstream.port, { BEARER_PROXY_DPOP: 'true' })
// With traces on, every request sampled (the worst case) and exported to a collector that keeps nothing.
const collector = await serve('collector')
const traced = await startBearerProxy(tokens.port, upstream.port, { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collector.port}`, OTEL_TRACES_SAMPLER: 'always_on' })

const targets = [
  ['direct', upstream.port, upstream.child.pid],
  ['bearer-proxy', proxy.port, proxy.child.pid],
  ['bearer-proxy DPoP', dpop.port, dpop.child.pid],
  ['bearer-proxy traced', traced.port, traced.child.pid],
  ...floors.map(([name, { port, child }]) => [name, port, child.pid]),
  ...peers.filter((peer) => peer.port !== undefined).map((peer) => [peer.name, peer.port, peer.child.pid])
]

// --- Throughput: two rounds of half the duration each, targets alternating -----
const results = {}
for (const [path, label] of [['/small', '1 KiB'], ['/large', '64 KiB']]) {
  const rounds = {}
  for (const [name, port] of targets) {
    await load(port, path, 2) // warm-up (JIT, connection pools), not counted
    rounds[name] = []
  }
  for (let round = 0; round < 2; round++) {
    for (const [name, port, pid] of targets) rounds[name].push(await load(port, path, DURATION / 2, pid))
  }
  results[label] = {}
  for (const [name, [a, b]] of Object.entries(rounds)) {
    const mean = (field) => Math.round((a[field] + b[field]) / 2 * 10) / 10
    results[label][name] = { rps: Math.round((a.rps + b.rps) / 2), p50: mean('p50'), p99: mean('p99'), cpu: Math.round((a.cpu + b.cpu) / 2), errors: a.errors + b.errors }
    process.stderr.write(`  ${label} ${name}: ${results[label][name].rps} req/s\n`)
  }
}

// --- Latency: one client, sequential, rounds alternating between targets --------
const clients = Object.fromEntries(targets.map(([name, port]) => [name, new Client(`http://127.0.0.1:${port}`, { pipelining: 1 })]))
const samples = Object.fromEntries(targets.map(([name]) => [name, []]))
for (const [name] of targets) await sequential(clients[name], 300) // warm-up
for (let round = 0; round < 4; round++) {
  for (const [name] of targets) samples[name].push(...await sequential(clients[name], SEQUENTIAL / 4))
}
const latency = {}
for (const [name, times] of Object.entries(samples)) {
  const sorted = times.sort((a, b) => a - b)
  latency[name] = { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99) }
}
for (const client of Object.values(clients)) await client.close()
for (const [name] of targets) {
  latency[name].addedP50 = latency[name].p50 - latency.direct.p50
  latency[name].addedP99 = latency[name].p99 - latency.direct.p99
}
const peakRss = status(proxy.child.pid, 'VmHWM')

// --- 256 MiB down and up through bearer-proxy ---------------------------------
const { received, sent } = await transfer(proxy.port)
const transferRss = status(proxy.child.pid, 'VmHWM')
const tokenRequests = Number(await (await fetch(`http://127.0.0.1:${tokens.port}/count`)).text())

// --- Report ----------------------------------------------------------------------
const ratio = (a, b) => (b === 0 ? 0 : a / b)
const lines = [`bearer-proxy bench, Node ${process.version}, ${new Date().toISOString().slice(0, 10)}`]
for (const [label, row] of Object.entries(results)) {
  lines.push(`\n${label} responses, ${CONNECTIONS} connections, ${DURATION} s each`)
  lines.push('target               req/s    p50 ms  p99 ms  vs direct  CPU µs/req  bearer-proxy vs it        errors')
  for (const [name, r] of Object.entries(row)) {
    const mine = name === 'direct' || name.startsWith('bearer-proxy') ? '' : `${ratio(row['bearer-proxy'].rps, r.rps).toFixed(2)}x rps, ${ratio(row['bearer-proxy'].cpu, r.cpu).toFixed(2)}x CPU/req`
    lines.push(`${name.padEnd(19)} ${String(r.rps).padStart(7)}  ${String(r.p50).padStart(7)} ${String(r.p99).padStart(7)}  ${ratio(r.rps, row.direct.rps).toFixed(2).padStart(8)}x  ${String(r.cpu).padStart(10)}  ${mine.padEnd(25)} ${r.errors}`)
  }
}
lines.push(`\none client, ${SEQUENTIAL} sequential 1 KiB requests each (4 alternating rounds)`)
lines.push('target                p50 µs   p99 µs   added p50  added p99')
for (const [name, l] of Object.entries(latency)) {
  const added = name === 'direct' ? '' : `${('+' + Math.round(l.addedP50)).padStart(9)}  ${('+' + Math.round(l.addedP99)).padStart(9)}`
  lines.push(`${name.padEnd(19)} ${String(Math.round(l.p50)).padStart(8)} ${String(Math.round(l.p99)).padStart(8)}  ${added}`)
}
for (const peer of peers.filter((peer) => peer.skipped !== undefined)) lines.push(`${peer.name}: ${peer.skipped}, skipped`)

const small = results['1 KiB']
const go = small['go ReverseProxy']
const check = (ok) => (ok ? 'met' : 'MISSED')
const targetLines = [
  ['idle RSS, settled (15 s after ready)', `${idleRss.toFixed(1)} MiB (own ${idleAnonymous.toFixed(1)})`, `≤ ${TARGETS.idleRss} MiB`, idleRss <= TARGETS.idleRss],
  ['  (1 s after ready)', `${startedRss.toFixed(1)} MiB`, '', true],
  ['peak RSS under the bench', `${peakRss.toFixed(1)} MiB`, `≤ ${TARGETS.peakRss} MiB`, peakRss <= TARGETS.peakRss],
  ['peak RSS after 256 MiB down and up', `${transferRss.toFixed(1)} MiB`, `≤ ${TARGETS.transferRss} MiB`, transferRss <= TARGETS.transferRss],
  ['spawn to /-/ready 200 (median of 3)', `${Math.round(median(readyTimes))} ms (${readyTimes.map(Math.round).join(', ')})`, `≤ ${TARGETS.readyMs} ms`, median(readyTimes) <= TARGETS.readyMs],
  ['added latency, one client, p50', `${Math.round(latency['bearer-proxy'].addedP50)} µs`, `≤ ${TARGETS.addedP50Us} µs`, latency['bearer-proxy'].addedP50 <= TARGETS.addedP50Us],
  ['1 KiB req/s vs fastify+http-proxy', `${ratio(small['bearer-proxy'].rps, small['fastify+http-proxy'].rps).toFixed(2)}x`, `≥ ${TARGETS.vsFloor.toFixed(2)}x`, ratio(small['bearer-proxy'].rps, small['fastify+http-proxy'].rps) >= TARGETS.vsFloor],
  ['  CPU per 1 KiB request vs it', `${ratio(small['bearer-proxy'].cpu, small['fastify+http-proxy'].cpu).toFixed(2)}x (${small['bearer-proxy'].cpu} µs, ${small['fastify+http-proxy'].cpu} µs)`, '', true],
  ['DPoP: 1 KiB req/s, CPU per request', `${ratio(small['bearer-proxy DPoP'].rps, small['bearer-proxy'].rps).toFixed(2)}x, ${ratio(small['bearer-proxy DPoP'].cpu, small['bearer-proxy'].cpu).toFixed(2)}x (${small['bearer-proxy DPoP'].cpu} µs)`, '', true],
  ['traces on: 1 KiB req/s, CPU per request', `${ratio(small['bearer-proxy traced'].rps, small['bearer-proxy'].rps).toFixed(2)}x, ${ratio(small['bearer-proxy traced'].cpu, small['bearer-proxy'].cpu).toFixed(2)}x (${small['bearer-proxy traced'].cpu} µs)`, '', true],
  ['  peak RSS, traces on', `${status(traced.child.pid, 'VmHWM').toFixed(1)} MiB`, '', true],
  ...(go === undefined ? [] : [['1 KiB req/s vs Go ReverseProxy', `${ratio(small['bearer-proxy'].rps, go.rps).toFixed(2)}x`, `≥ ${TARGETS.vsGo.toFixed(2)}x`, ratio(small['bearer-proxy'].rps, go.rps) >= TARGETS.vsGo]])
]
lines.push('\nbearer-proxy footprint            measured                  target      ')
for (const [what, value, target, ok] of targetLines) lines.push(`${what.padEnd(36)} ${value.padEnd(24)} ${target.padEnd(11)} ${target === '' ? '' : check(ok)}`.trimEnd())
lines.push('(own: anonymous memory, V8\'s heap and malloc; the rest of RSS is pages of the node binary itself, file-backed and shared)')
lines.push(`256 MiB through the proxy: ${received === 4096 * 65536 ? 'down whole' : `down ${received} bytes`}, ${sent === 4096 * 65536 ? 'up whole' : `up ${sent} bytes`}`)
lines.push(`token requests during the run: ${tokenRequests} (5 starts, one with DPoP, one traced: must be 5)`)
lines.push(`spans exported by the traced proxy: ${Math.round(Number(await (await fetch(`http://127.0.0.1:${collector.port}/count`)).text()) / 1024)} KiB of OTLP`)
// The footprint on each runtime, with the other servers stopped: they would share the cores.
for (const child of [proxy.child, dpop.child, traced.child, collector.child, ...floors.map(([, { child }]) => child), ...peers.map((peer) => peer.child)]) child?.kill()
const byRuntime = await footprintReport(upstream.port, tokens.port)
lines.push(...byRuntime.lines)
process.stdout.write(lines.join('\n') + '\n')
if (JSON_FILE !== undefined) {
  writeFileSync(JSON_FILE, JSON.stringify({
    node: process.version, connections: CONNECTIONS, durationSeconds: DURATION, results, latency, readyMs: readyTimes, startedRssMiB: startedRss, idleRssMiB: idleRss, idleAnonymousMiB: idleAnonymous, peakRssMiB: peakRss, transferRssMiB: transferRss,
    tokenRequests, runtimes: byRuntime.measured, skipped: peers.filter((peer) => peer.skipped !== undefined).map(({ name, skipped }) => ({ name, skipped }))
  }, null, 2) + '\n')
}

for (const child of [upstream.child, tokens.child, proxy.child, dpop.child, traced.child, collector.child, ...floors.map(([, { child }]) => child), ...peers.map((peer) => peer.child)]) child?.kill()
