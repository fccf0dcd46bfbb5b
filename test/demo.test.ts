import { once } from 'node:events'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { request } from 'undici'
import { waitForLine } from './helpers/stack.js'

t.test('npm run demo: identity provider, API and proxy; the printed curl line works; Ctrl-C stops it', async (t) => {
  const demo = spawn('env', ['-u', 'NODE_OPTIONS', process.execPath, fileURLToPath(new URL('../build/demo/main.js', import.meta.url))], {
    env: { ...process.env, BEARER_PROXY_PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { demo.kill('SIGKILL') })
  let banner = ''
  demo.stderr.on('data', (chunk: Buffer) => { banner += chunk.toString() })
  await waitForLine(demo, /"event":"token_fetched"/)
  const curl = /curl -s (http:\/\/127\.0\.0\.1:\d+\/api\/v1\/clusters)/.exec(banner)
  t.ok(curl, 'a curl line is printed')
  const direct = /refused\):\n\s+curl -s (\S+)/.exec(banner)

  const through = await request(curl?.[1] as string)
  t.equal(through.statusCode, 200)
  t.match(await through.body.json(), [{ name: 'gpu-a' }])
  const refused = await request(direct?.[1] as string)
  t.equal(refused.statusCode, 401, 'the API refuses calls without the proxy')
  await refused.body.dump()

  demo.kill('SIGINT')
  const [code] = await once(demo, 'exit') as [number]
  t.equal(code, 0)
})
