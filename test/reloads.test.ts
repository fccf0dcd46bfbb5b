import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { runInNewContext } from 'node:vm'
import { setFlagsFromString } from 'node:v8'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { loadConfig } from '../src/config.js'
import { collect, runCli } from './helpers/stack.js'

const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-reloads-test-'))
const write = (name: string, text: string): string => {
  writeFileSync(join(dir, name), text)
  return join(dir, name)
}

t.test('checking a configuration again and again keeps no memory: one schema, compiled once (each reload compiled and kept 60 KB more)', async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const file = write('again.yaml', 'tokenUrl: http://127.0.0.1:1/token\nclientId: c\nclientSecret: s\nupstream: http://127.0.0.1:2\n')
  const heap = (): number => { gc(); gc(); return process.memoryUsage().heapUsed }
  for (let i = 0; i < 20; i++) loadConfig({ configFile: file, env: {} })
  const before = heap()
  for (let i = 0; i < 300; i++) loadConfig({ configFile: file, env: {} })
  const grew = (heap() - before) / 1048576
  t.ok(grew < 4, `the heap grew ${grew.toFixed(1)} MiB over 300 checks`)
})

t.test('a configuration file is at most 256 KiB, and its duplicate keys are found in every mapping, at their line', async (t) => {
  const big = write('big.yaml', `tokenUrl: http://127.0.0.1:1/token\nclientId: c\nclientSecret: s\nupstream: http://127.0.0.1:2\ntokenParams:\n${Array.from({ length: 20_000 }, (_, i) => `  k${i}: v${i}`).join('\n')}\n`)
  const refused = await runCli(['check', '--config', big], {})
  t.equal(refused.code, 2)
  t.match(refused.stderr, /--config \S+big\.yaml: larger than 256 KiB, which no configuration needs/)
  const duplicates = write('duplicates.yaml', `port: 0
credentials:
  north: { tokenUrl: "http://127.0.0.1:1/token", clientId: c, clientId: d, clientSecret: s }
routes:
  - prefix: /n
    credentials: north
    prefix: /m
    clusters: { gpu: "http://127.0.0.1:3", gpu: "http://127.0.0.1:4" }
port: 1
`)
  const result = await runCli(['check', '--config', duplicates], {})
  t.equal(result.code, 2)
  t.same(result.stderr.split('\n').filter((line) => line.includes('duplicates.yaml')).map((line) => line.replace(/^.*duplicates\.yaml/, '')), [
    ':3:63: a key that this mapping already has',
    ':7:5: a key that this mapping already has',
    ':8:44: a key that this mapping already has',
    ':9:1: a key that this mapping already has'
  ])
})

// `npm run reloads` with 50 reloads: the script works, and nothing piles up (its full run is 1000: README, Reload).
t.test('bench/reloads.mjs, short: reloads under load answer every request, keep descriptors flat, and do not stall on a large file', async (t) => {
  const script = fileURLToPath(new URL('../bench/reloads.mjs', import.meta.url))
  const child = spawn(process.execPath, [script, '--reloads', '50'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } })
  const output = collect(child)
  const timer = setTimeout(() => child.kill('SIGKILL'), 90_000)
  const [code] = await once(child, 'exit') as [number | null]
  clearTimeout(timer)
  const { stdout, stderr } = output()
  if (code !== 0) t.comment(`${stdout}\n${stderr}`)
  const summary = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as { other: number, missed: number, end: { fds: number }, early: { fds: number } }
  t.equal(code, 0, 'its targets met')
  t.equal(summary.other, 0, 'every request answered 200')
  t.ok(summary.end.fds <= summary.early.fds + 2, 'descriptors flat')
})
