import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { collect } from './helpers/stack.js'

const SOAK = fileURLToPath(new URL('../bench/soak.mjs', import.meta.url))

interface Summary {
  requests: number
  ok: number
  tokenUnavailable: number
  upstream401: number
  other: Record<string, number>
  expiredAtApi: number
  revocations: number
  exitCode: number | null
  missed: number
}

// `npm run soak` in a few seconds: the same kinds of outcome as the full soak, no timings.
t.test('a short fault soak through the CLI: only 200s and 503 token_unavailable, no 401 passed on, no expired token sent', async (t) => {
  const child = spawn(process.execPath, [SOAK, '--short'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } })
  const output = collect(child)
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  const [code] = await once(child, 'exit') as [number | null]
  clearTimeout(timer)
  const { stdout, stderr } = output()
  const summary = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as Summary
  if (code !== 0) t.comment(`${stdout}\n${stderr}`)
  t.equal(code, 0, 'the soak met its targets')
  t.ok(summary.requests > 100, `${summary.requests} requests`)
  t.equal(summary.ok + summary.tokenUnavailable, summary.requests, 'every answer 200 or 503 token_unavailable')
  t.same(summary.other, {})
  t.equal(summary.upstream401, 0, 'no upstream 401 reached a client')
  t.equal(summary.expiredAtApi, 0, 'no expired token reached the API')
  t.ok(summary.revocations > 0, `${summary.revocations} revocations, each retried`)
  t.equal(summary.exitCode, 0, 'the proxy exits 0 on SIGTERM')
})
