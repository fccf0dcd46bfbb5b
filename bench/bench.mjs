#!/usr/bin/env node
// npm run bench [-- --json FILE] [-- --duration S]
// Upstream alone and through bearer-proxy, node:http and undici pipe proxies and
// nginx (when installed), in one run, all on 127.0.0.1, with autocannon.
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import autocannon from 'autocannon'

const args = process.argv.slice(2)
const option = (name, fallback) => {
  const at = args.indexOf(name)
  return at === -1 ? fallback : args[at + 1]
}
const DURATION = Number(option('--duration', '8'))
const JSON_FILE = option('--json', undefined)
const CONNECTIONS = 50
const here = fileURLToPath(new URL('.', import.meta.url))
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url))

/** A child process running one of the servers in servers.mjs; resolves with its port once it listens. */
async function serve (role, env = {}, argv = []) {
  const child = spawn(process.execPath, [...argv, join(here, 'servers.mjs'), role], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  const [line] = await once(child.stdout, 'data')
  const port = Number(/listening (\d+)/.exec(String(line))?.[1])
  child.stdout.resume()
  return { child, port }
}

async function freePort () {
  const { createServer } = await import('node:net')
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

function peakRss (pid) {
  return Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024
}

async function load (port, path, duration = DURATION) {
  const result = await autocannon({ url: `http://127.0.0.1:${port}${path}`, connections: CONNECTIONS, duration, pipelining: 1 })
  return {
    rps: Math.round(result.requests.average),
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors + result.timeouts + result.non2xx
  }
}

async function startNginx (upstreamPort) {
  const which = spawnSync('sh', ['-c', 'command -v nginx || ls /usr/sbin/nginx'], { encoding: 'utf8' })
  const binary = which.stdout.trim().split('\n')[0]
  if (which.status !== 0 || binary === '') return undefined
  const dir = mkdtempSync(join(tmpdir(), 'bench-nginx-'))
  const port = await freePort()
  writeFileSync(join(dir, 'nginx.conf'), `
worker_processes 1;
daemon off;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  upstream api { server 127.0.0.1:${upstreamPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer fixed-token";
    }
  }
}
`)
  const child = spawn(binary, ['-c', join(dir, 'nginx.conf'), '-p', dir], { stdio: 'inherit' })
  for (let i = 0; i < 100; i++) {
    try {
      const response = await fetch(`http://127.0.0.1:${port}/small`)
      await response.arrayBuffer()
      return { child, port }
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  child.kill()
  return undefined
}

const upstream = await serve('upstream')
const tokens = await serve('token')
const undiciPipe = await serve('undici-pipe', { UPSTREAM_PORT: String(upstream.port) })
const nodePipe = await serve('node-pipe', { UPSTREAM_PORT: String(upstream.port) })
const stackFloor = await serve('fastify-http-proxy', { UPSTREAM_PORT: String(upstream.port) })
const nginx = await startNginx(upstream.port)

const proxyPort = await freePort()
// Started as users start it: dist/cli.js by its shebang, with its node flags.
const proxy = spawn(cli, ['serve'], {
  env: {
    ...process.env,
    BEARER_PROXY_TOKEN_URL: `http://127.0.0.1:${tokens.port}/token`,
    BEARER_PROXY_CLIENT_ID: 'bench',
    BEARER_PROXY_CLIENT_SECRET: 'bench-secret',
    BEARER_PROXY_UPSTREAM: `http://127.0.0.1:${upstream.port}`,
    BEARER_PROXY_PORT: String(proxyPort),
    BEARER_PROXY_LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn'
  },
  stdio: ['ignore', 'pipe', 'inherit']
})
proxy.stdout.resume()
// Bounded wait for the first token (/-/ready 200).
for (let i = 0; i < 100; i++) {
  const ready = await fetch(`http://127.0.0.1:${proxyPort}/-/ready`).then((response) => response.status, () => 0)
  if (ready === 200) break
  await new Promise((resolve) => setTimeout(resolve, 50))
}

const targets = [
  ['direct', upstream.port],
  ['bearer-proxy', proxyPort],
  ['undici pipe', undiciPipe.port],
  ['node:http pipe', nodePipe.port],
  ['fastify+http-proxy', stackFloor.port],
  ...(nginx === undefined ? [] : [['nginx', nginx.port]])
]
// Two rounds of half the duration each, targets alternating, so that a slow spell of
// this shared machine does not fall on one target only.
const results = {}
for (const [path, label] of [['/small', '1 KiB'], ['/large', '64 KiB']]) {
  const rounds = {}
  for (const [name, port] of targets) {
    await load(port, path, 2) // warm-up (JIT, connection pools), not counted
    rounds[name] = []
  }
  for (let round = 0; round < 2; round++) {
    for (const [name, port] of targets) rounds[name].push(await load(port, path, DURATION / 2))
  }
  results[label] = {}
  for (const [name, [a, b]] of Object.entries(rounds)) {
    const mean = (field) => Math.round((a[field] + b[field]) / 2 * 10) / 10
    results[label][name] = { rps: Math.round((a.rps + b.rps) / 2), p50: mean('p50'), p99: mean('p99'), errors: a.errors + b.errors }
    process.stderr.write(`  ${label} ${name}: ${results[label][name].rps} req/s\n`)
  }
}
const tokenRequests = Number(await (await fetch(`http://127.0.0.1:${tokens.port}/count`)).text())
const proxyRss = peakRss(proxy.pid)

const ratio = (a, b) => (b === 0 ? 0 : a / b)
const lines = []
for (const [label, row] of Object.entries(results)) {
  lines.push(`\n${label} responses, ${CONNECTIONS} connections, ${DURATION} s each`)
  lines.push('target              req/s     p50 ms  p99 ms  vs direct  bearer-proxy vs it  errors')
  for (const [name, r] of Object.entries(row)) {
    const mine = name === 'bearer-proxy' || name === 'direct' ? '' : `${ratio(row['bearer-proxy'].rps, r.rps).toFixed(2)}x rps, ${ratio(row['bearer-proxy'].p99, r.p99).toFixed(2)}x p99`
    lines.push(`${name.padEnd(18)} ${String(r.rps).padStart(7)}  ${String(r.p50).padStart(7)} ${String(r.p99).padStart(7)}  ${ratio(r.rps, row.direct.rps).toFixed(2).padStart(8)}x  ${mine.padEnd(19)} ${r.errors}`)
  }
}
if (nginx === undefined) lines.push('\nnginx: not installed, skipped (apt-get install nginx-light)')
lines.push(`\ntoken requests during the run: ${tokenRequests} (must be 1)`)
lines.push(`bearer-proxy peak RSS: ${proxyRss.toFixed(1)} MiB`)
process.stdout.write(lines.join('\n') + '\n')
if (JSON_FILE !== undefined) {
  writeFileSync(JSON_FILE, JSON.stringify({ connections: CONNECTIONS, durationSeconds: DURATION, results, tokenRequests, proxyPeakRssMiB: proxyRss, nginx: nginx !== undefined }, null, 2) + '\n')
}

for (const child of [upstream.child, tokens.child, undiciPipe.child, nodePipe.child, stackFloor.child, proxy, nginx?.child]) child?.kill()
