import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { Readable } from 'node:stream'
import t from 'tap'
import { request } from 'undici'
import { baseEnv, collect, spawnCli, startApiOf, startIdentity, waitForLine } from './helpers/stack.js'

const SIZE = 256 * 1024 * 1024
const BLOCK = Buffer.alloc(64 * 1024)
for (let i = 0; i < BLOCK.length; i++) BLOCK[i] = (i * 7919) % 251

/** 256 MiB, block by block, each block made distinct by its index. */
function* blocks (): Generator<Buffer> {
  for (let i = 0; i < SIZE / BLOCK.length; i++) {
    const block = Buffer.from(BLOCK)
    block.writeUInt32BE(i, 0)
    yield block
  }
}

const expected = createHash('sha256')
for (const block of blocks()) expected.update(block)
const SHA = expected.digest('hex')

function peakRss (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1]) / 1024
}

t.test('256 MiB down and 256 MiB up arrive intact, with the proxy\'s peak RSS under 140 MiB', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 300 })
  const api = await startApiOf(t, idp)
  api.routes.set('/download', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(SIZE) })
    Readable.from(blocks()).pipe(res)
  })
  const child = spawnCli(['serve'], { ...baseEnv(idp, api), BEARER_PROXY_LOG_LEVEL: 'info' })
  const output = collect(child)
  t.teardown(() => { child.kill('SIGKILL') })
  const listening = await waitForLine(child, /"event":"listening"/, 10_000).catch(() => '')
  const port = /127\.0\.0\.1:(\d+)/.exec(listening)?.[1]
  t.ok(port, output().stdout)
  const url = `http://127.0.0.1:${port}`

  const baseline = peakRss(child.pid as number)
  const started = Date.now()
  const download = await request(`${url}/download`)
  const hash = createHash('sha256')
  let size = 0
  for await (const chunk of download.body) {
    hash.update(chunk as Buffer)
    size += (chunk as Buffer).length
  }
  t.equal(size, SIZE)
  t.equal(hash.digest('hex'), SHA, 'download intact')
  const downMs = Date.now() - started
  const afterDownload = peakRss(child.pid as number)

  const upStarted = Date.now()
  const upload = await request(`${url}/upload`, { method: 'PUT', body: Readable.from(blocks()) })
  const echo = await upload.body.json() as { bodyLength: number, bodySha256: string }
  t.equal(echo.bodyLength, SIZE)
  t.equal(echo.bodySha256, SHA, 'chunked upload intact')
  const upMs = Date.now() - upStarted
  const afterUpload = peakRss(child.pid as number)

  t.comment(`baseline peak RSS ${baseline.toFixed(1)} MiB`)
  t.comment(`download ${downMs} ms, peak RSS ${afterDownload.toFixed(1)} MiB; upload ${upMs} ms, peak RSS ${afterUpload.toFixed(1)} MiB`)
  t.ok(afterUpload < 140, `peak RSS ${afterUpload.toFixed(1)} MiB`)
})
