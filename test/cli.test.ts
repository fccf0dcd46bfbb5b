import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import t from 'tap'
import { request } from 'undici'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { baseEnv, CLIENT, collect, runCli, spawnCli, startApiOf, startIdentity, waitForLine } from './helpers/stack.js'
import { startTokenEndpoint } from './helpers/token-endpoint.js'

const DEMO = fileURLToPath(new URL('../build/demo/main.js', import.meta.url))


t.test('--env-file is the tool\'s own on every Node: a missing file is its message and exit 2, a good one is read', async (t) => {
  // Node 20 takes --env-file for itself even after the script name (exit 9, "node: missing.env: not found")
  // unless the shebang ends node's options with `--`.
  const { mkdtempSync, writeFileSync } = await import('node:fs')
  const { join } = await import('node:path')
  const { tmpdir } = await import('node:os')
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-envfile-'))
  for (const args of [['check', '--env-file', 'missing.env'], ['check', '--env-file=missing.env'], ['token', '--env-file', 'missing.env'], ['--env-file', 'missing.env']]) {
    const result = await runCli(args, {}, { cwd: dir })
    t.equal(result.code, 2, args.join(' '))
    t.match(result.stderr, /--env-file missing\.env: cannot read it \(ENOENT\)/)
    t.notMatch(result.stderr, /^node:/m, 'not Node\'s own message')
  }
  const idp = await startIdentity(t, { accessTokenTtl: 600 })
  writeFileSync(join(dir, 'good.env'), `BEARER_PROXY_TOKEN_URL=${idp.tokenUrl}\nBEARER_PROXY_CLIENT_ID=${CLIENT.clientId}\nBEARER_PROXY_CLIENT_SECRET=${CLIENT.clientSecret}\n`)
  const good = await runCli(['check', '--env-file', 'good.env'], {}, { cwd: dir })
  t.equal(good.code, 0, good.stderr)
  t.match(good.stdout, new RegExp(`subject: ${CLIENT.clientId}`))
})

t.test('a port already in use: exit 2 at once, naming the address and the setting, before any token request', async (t) => {
  const { createServer } = await import('node:net')
  const { mkdtempSync } = await import('node:fs')
  const { join } = await import('node:path')
  const { tmpdir } = await import('node:os')
  const taken = createServer()
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { taken.close() })
  const port = (taken.address() as import('node:net').AddressInfo).port
  const endpoint = await startTokenEndpoint(t, () => ({ body: { access_token: 'never-asked', expires_in: 60 } }))
  const cwd = mkdtempSync(join(tmpdir(), 'bearer-proxy-port-'))
  const env = { BEARER_PROXY_TOKEN_URL: `${endpoint.url}/token`, BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_UPSTREAM: endpoint.url }
  const serve = await runCli(['serve'], { ...env, BEARER_PROXY_PORT: String(port) }, { cwd })
  t.equal(serve.code, 2)
  t.match(serve.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: the address is already in use; choose another with BEARER_PROXY_PORT`))
  t.notMatch(serve.stderr, /\n\s+at /, 'no stack trace')
  const admin = await runCli(['serve'], { ...env, BEARER_PROXY_PORT: '0', BEARER_PROXY_ADMIN_ADDRESS: String(port) }, { cwd })
  t.equal(admin.code, 2)
  t.match(admin.stderr, /already in use; choose another with BEARER_PROXY_ADMIN_ADDRESS/)
  t.equal(endpoint.calls.length, 0, 'no token was requested')

  const demo = spawn('env', ['-u', 'NODE_OPTIONS', process.execPath, DEMO], { env: { ...process.env, BEARER_PROXY_PORT: String(port) }, cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  const output = collect(demo)
  const [code] = await once(demo, 'exit') as [number]
  t.equal(code, 2, 'the demo too')
  t.match(output().stderr, /bearer-proxy demo: cannot listen on .*already in use.*BEARER_PROXY_PORT=9000 npm run demo/)
  t.notMatch(output().stderr, /\n\s+at /, 'no stack trace')
})

t.test('an https:// URL on a plain-http port says so, for the token endpoint and for an upstream', async (t) => {
  const endpoint = await startTokenEndpoint(t, () => ({ body: { access_token: 'plain-token', expires_in: 60 } }))
  const tls = endpoint.url.replace('http://', 'https://')
  const check = await runCli(['check'], { BEARER_PROXY_TOKEN_URL: `${tls}/token`, BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's' })
  t.equal(check.code, 1)
  t.match(check.stderr, /token endpoint https:\/\/127\.0\.0\.1:\d+\/token is unreachable: the server did not answer TLS; is the URL http:\/\/\?/)
  t.notMatch(check.stderr, /certificate/)
  const idp = await startIdentity(t)
  const proxy = spawnCli(['serve'], { ...baseEnv(idp, { url: tls }), BEARER_PROXY_PORT: '0' })
  t.teardown(() => { proxy.kill('SIGKILL') })
  const listening = JSON.parse(await waitForLine(proxy, /"event":"listening"/)) as { address: string }
  const answer = await request(`${listening.address}/x`)
  t.equal(answer.statusCode, 502)
  t.match(await answer.body.json(), { error: 'upstream_unreachable', message: /upstream admin \(https:\/\/127\.0\.0\.1:\d+\) did not answer TLS; is the URL http:\/\/\?/ })
})

t.test('check prints the subject and expiry; token prints the token alone on stdout', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 600 })
  const env = { BEARER_PROXY_TOKEN_URL: idp.tokenUrl, BEARER_PROXY_CLIENT_ID: CLIENT.clientId, BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret }
  const check = await runCli(['check'], env)
  t.equal(check.code, 0, check.stderr)
  t.match(check.stdout, new RegExp(`subject: ${CLIENT.clientId}`))
  t.match(check.stdout, /expires: \d{4}-\d\d-\d\dT[\d:.]+Z \(in (599|600) s\)/)

  const token = await runCli(['token'], env)
  t.equal(token.code, 0)
  t.match(token.stdout, /^ey[\w-]+\.[\w-]+\.[\w-]+\n$/, 'one JWT and a newline')
  t.equal(token.stderr, '', 'nothing else at the default level')
})

t.test('check fails with exit 1 naming the endpoint\'s error code', async (t) => {
  const idp = await startIdentity(t)
  const result = await runCli(['check'], { BEARER_PROXY_TOKEN_URL: idp.tokenUrl, BEARER_PROXY_CLIENT_ID: CLIENT.clientId, BEARER_PROXY_CLIENT_SECRET: 'wrong-Secret-123' })
  t.equal(result.code, 1)
  t.match(result.stderr, /answered 401 invalid_client/)
  t.notMatch(result.stderr + result.stdout, /wrong-Secret-123/)
  t.equal(result.stdout, '')
})

t.test('serve, health, and SIGTERM: in-flight requests finish, new connections are refused, exit 0', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  let release: () => void = () => {}
  api.routes.set('/slow', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('first ')
    release = () => res.end('last')
  })
  const env = { ...baseEnv(idp, api), BEARER_PROXY_PORT: '0' }
  const child = spawnCli(['serve'], env)
  const output = collect(child)
  t.teardown(() => { child.kill('SIGKILL') })
  const listening = await waitForLine(child, /"event":"listening"/)
  const address = (JSON.parse(listening) as { address: string }).address
  await waitForLine(child, /"event":"token_fetched"/)
  const port = new URL(address).port
  // Run by its shebang, as users and the image run it: node gets the young-generation cap.
  const argv = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0')
  t.ok(argv.includes('--max-semi-space-size=4'), argv.join(' '))
  t.ok(argv.includes('--expose-gc'), 'and the collection a reload asks for')

  const healthy = await runCli(['health'], { ...env, BEARER_PROXY_PORT: port })
  t.equal(healthy.code, 0, 'health: 0 while ready')

  const inflight = await request(`${address}/slow`)
  t.equal(inflight.statusCode, 200)
  child.kill('SIGTERM')
  await waitForLine(child, /shutting down/)
  await t.rejects(request(`${address}/new`), 'new connections are refused')
  release()
  t.equal(await inflight.body.text(), 'first last', 'the in-flight request finished')
  const [code] = await once(child, 'exit') as [number]
  t.equal(code, 0)
  t.notMatch(output().stderr, /Error/)

  const down = await runCli(['health'], { ...env, BEARER_PROXY_PORT: port })
  t.equal(down.code, 1, 'health: 1 when nothing answers')
})

t.test('shutdown: a stream still open after 10 s is cut and the process exits 0; a second signal exits at once', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  api.routes.set('/endless', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    const timer = setInterval(() => res.write('tick\n'), 100)
    res.on('close', () => clearInterval(timer))
  })
  const start = async (): Promise<{ child: ReturnType<typeof spawnCli>, address: string }> => {
    const child = spawnCli(['serve'], { ...baseEnv(idp, api), BEARER_PROXY_PORT: '0' })
    t.teardown(() => { child.kill('SIGKILL') })
    const address = (JSON.parse(await waitForLine(child, /"event":"listening"/)) as { address: string }).address
    await waitForLine(child, /"event":"token_fetched"/)
    return { child, address }
  }

  const patient = await start()
  const stream = await request(`${patient.address}/endless`)
  stream.body.on('data', () => {}).on('error', () => {})
  const signalled = Date.now()
  patient.child.kill('SIGTERM')
  const [code] = await once(patient.child, 'exit') as [number]
  const waited = Date.now() - signalled
  t.equal(code, 0)
  t.ok(waited >= 9500 && waited < 13_000, `exited after the 10 s grace (${waited} ms)`)

  const impatient = await start()
  const second = await request(`${impatient.address}/endless`)
  second.body.on('data', () => {}).on('error', () => {})
  impatient.child.kill('SIGINT')
  await waitForLine(impatient.child, /shutting down/)
  const again = Date.now()
  impatient.child.kill('SIGINT')
  const [secondCode] = await once(impatient.child, 'exit') as [number]
  t.ok(Date.now() - again < 2000, 'a second signal exits at once')
  t.equal(secondCode, 1)
})
