import { once } from 'node:events'
import { decodeJwt } from 'jose'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { baseEnv, CLIENT, collect, runCli, spawnCli, startApiOf, startIdentity, waitForLine } from './helpers/stack.js'
import { startTokenEndpoint } from './helpers/token-endpoint.js'
import { makePki } from './helpers/tls.js'

t.test('check reaches each upstream with the token: one line per route, exit 1 if any fails, no log line', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 600 })
  const api = await startApiOf(t, idp)
  // An API that trusts another provider: it refuses this token.
  const stranger = await startApiOf(t, await startIdentity(t))
  const tokens = await startTokenEndpoint(t, () => ({ body: { access_token: 'unused', expires_in: 60 } }))
  const plain = tokens.url.replace('http://', 'https://')
  const env = {
    BEARER_PROXY_TOKEN_URL: idp.tokenUrl,
    BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
    BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret,
    BEARER_PROXY_UPSTREAM: `${api.url}/base`,
    BEARER_PROXY_CLUSTERS: `refusing=${stranger.url},gone=http://127.0.0.1:1,plain=${plain}`
  }
  const failing = await runCli(['check'], env)
  t.equal(failing.code, 1)
  const lines = failing.stdout.trim().split('\n')
  t.match(lines.slice(0, 3), ['ok: token obtained', `subject: ${CLIENT.clientId}`, /^expires: /])
  t.same(lines.slice(3).sort(), [
    `FAILED: upstream gone (http://127.0.0.1:1/) refused the connection`,
    `FAILED: upstream plain (${plain}/) did not answer TLS; is the URL http://?`,
    `FAILED: upstream refusing (${stranger.url}/) answered 401, the token was refused`,
    `ok: upstream admin (${api.url}/base/) answered 200, token accepted`
  ].sort())
  t.equal(failing.stderr, '', 'no JSON log line unless LOG_LEVEL asks')
  t.match(api.seen.at(-1), { method: 'GET', url: '/base/', authorized: true })

  const passing = await runCli(['check'], { ...env, BEARER_PROXY_CLUSTERS: '', BEARER_PROXY_CHECK_PATH: '/api/v1/health' })
  t.equal(passing.code, 0, passing.stdout)
  t.match(passing.stdout, `ok: upstream admin (${api.url}/base/api/v1/health) answered 200, token accepted\n`)
  t.match(api.seen.at(-1), { url: '/base/api/v1/health', authorized: true }, 'CHECK_PATH, below the upstream\'s base path')

  const logged = await runCli(['check'], { ...env, BEARER_PROXY_CLUSTERS: '', BEARER_PROXY_LOG_LEVEL: 'info' })
  t.match(logged.stderr, /"event":"token_fetched"/, 'log lines when asked for, on stderr')
  t.notMatch(logged.stdout, /^\{/m)

  const badPath = await runCli(['check'], { ...env, BEARER_PROXY_CHECK_PATH: 'health' })
  t.equal(badPath.code, 2)
  t.match(badPath.stderr, /BEARER_PROXY_CHECK_PATH: must match pattern "\^\/"/)
})

t.test('check over TLS says whether the certificate was verified; 403 and 5xx count as failures', async (t) => {
  const pki = makePki()
  const statuses = new Map([['/forbidden', 403], ['/broken', 503]])
  const server = createHttpsServer({ key: pki.key, cert: pki.cert }, (req, res) => {
    req.resume()
    if (req.url === '/token') res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: 'tls-token', expires_in: 60 }))
    else res.writeHead(statuses.get(req.url ?? '') ?? (req.headers.authorization === 'Bearer tls-token' ? 200 : 401)).end()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`
  const env = { BEARER_PROXY_TOKEN_URL: `${origin}/token`, BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_UPSTREAM: origin, BEARER_PROXY_CA_FILE: pki.caFile }
  const verified = await runCli(['check'], env)
  t.equal(verified.code, 0, verified.stderr)
  t.match(verified.stdout, `ok: upstream admin (${origin}/) answered 200, TLS verified, token accepted\n`)
  const forbidden = await runCli(['check'], { ...env, BEARER_PROXY_CHECK_PATH: '/forbidden' })
  t.equal(forbidden.code, 1)
  t.match(forbidden.stdout, 'FAILED: upstream admin (' + origin + '/forbidden) answered 403, TLS verified, the token was accepted but may not read this path (set BEARER_PROXY_CHECK_PATH)')
  const broken = await runCli(['check'], { ...env, BEARER_PROXY_CHECK_PATH: '/broken' })
  t.equal(broken.code, 1)
  t.match(broken.stdout, 'answered 503, TLS verified, the upstream failed')
  const insecure = await runCli(['check'], { ...env, BEARER_PROXY_CA_FILE: '', BEARER_PROXY_INSECURE_SKIP_VERIFY: 'true' })
  t.equal(insecure.code, 0)
  t.match(insecure.stdout, 'answered 200, TLS NOT verified, token accepted')
  t.match(insecure.stderr, /^bearer-proxy: warning: BEARER_PROXY_INSECURE_SKIP_VERIFY=true: TLS certificates are NOT verified\n$/, 'said loudly, in plain words')
})

t.test('health needs only where the proxy listens, prefers the admin listener, and names the URL it tried', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const child = spawnCli(['serve'], { ...baseEnv(idp, api), BEARER_PROXY_ADMIN_ADDRESS: '127.0.0.1:0' })
  t.teardown(() => { child.kill('SIGKILL') })
  const listening = JSON.parse(await waitForLine(child, /"event":"listening"/)) as { address: string, admin: string }
  await waitForLine(child, /"event":"ready"/)
  const port = new URL(listening.address).port
  const adminPort = new URL(listening.admin).port

  // No credentials, no upstream: only the port.
  const main = await runCli(['health', '--port', port], {})
  t.equal(main.code, 0, main.stderr)
  t.equal(main.stdout, `ok: http://127.0.0.1:${port}/-/ready answered 200\n`)
  const admin = await runCli(['health'], { BEARER_PROXY_PORT: '1', BEARER_PROXY_ADMIN_ADDRESS: `0.0.0.0:${adminPort}` })
  t.equal(admin.code, 0, admin.stderr)
  t.equal(admin.stdout, `ok: http://127.0.0.1:${adminPort}/-/ready answered 200\n`, 'the admin listener, reached on loopback')
  const typo = await runCli(['health', '--port', port], { BEARER_PROXY_UPSTRAEM: 'x', BEARER_PROXY_AUTH: 'kerberos' })
  t.equal(typo.code, 0, 'settings it does not read cannot fail a health check')

  const down = await runCli(['health', '--port', '1'], {})
  t.equal(down.code, 1)
  t.equal(down.stderr, 'bearer-proxy: health: http://127.0.0.1:1/-/ready failed: ECONNREFUSED\n')
  const bad = await runCli(['health', '--port', 'eighty'], {})
  t.equal(bad.code, 2)
  t.match(bad.stderr, /--port: must be a port number/)

  // Not ready: the token endpoint refuses.
  const refusing = await startTokenEndpoint(t, () => ({ status: 400, body: { error: 'invalid_client' } }))
  const unready = spawnCli(['serve'], { ...baseEnv(idp, api), BEARER_PROXY_TOKEN_URL: `${refusing.url}/token` })
  t.teardown(() => { unready.kill('SIGKILL') })
  const unreadyAddress = (JSON.parse(await waitForLine(unready, /"event":"listening"/)) as { address: string }).address
  await waitForLine(unready, /"event":"token_failed"/)
  const notReady = await runCli(['health', '--port', new URL(unreadyAddress).port], {})
  t.equal(notReady.code, 1)
  t.equal(notReady.stderr, `bearer-proxy: health: ${unreadyAddress}/-/ready answered 503\n`)
})

t.test('TOKEN_FILE: serve keeps the current token there (0600, atomic, renewed, removed at exit); token reads it', async (t) => {
  const { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } = await import('node:fs')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const { request } = await import('undici')
  const idp = await startIdentity(t, { accessTokenTtl: 4 })
  const api = await startApiOf(t, idp)
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-token-file-'))
  const file = join(dir, 'token')
  const env = { ...baseEnv(idp, api), BEARER_PROXY_TOKEN_FILE: file }
  const child = spawnCli(['serve'], { ...env, BEARER_PROXY_LOG_LEVEL: 'debug' })
  const output = collect(child)
  t.teardown(() => { child.kill('SIGKILL') })
  await waitForLine(child, /"event":"ready"/)
  const first = readFileSync(file, 'utf8')
  t.equal(statSync(file).mode & 0o777, 0o600)
  t.same(readdirSync(dir), ['token'], 'no temporary file left beside it')
  const direct = await request(`${api.url}/with-the-file`, { headers: { authorization: `Bearer ${first}` } })
  t.equal(direct.statusCode, 200, 'the file holds a token the API accepts')
  await direct.body.dump()

  const fromFile = await runCli(['token'], env)
  // A slow machine may have renewed it meanwhile: the token is one the proxy wrote, never a new one.
  t.ok([first, readFileSync(file, 'utf8')].includes(fromFile.stdout.trim()), 'token reads the running proxy\'s file instead of fetching')

  // The renewal's line can reach the pipe before the file is renamed (pino writes off the main thread);
  // the debug line `token_file_written` comes after the rename.
  let second = first
  for (let writes = 0; writes < 4 && second === first; writes++) {
    await waitForLine(child, /"event":"token_file_written"/)
    second = readFileSync(file, 'utf8')
  }
  t.not(second, first, 'rewritten at renewal')
  t.ok(output().stdout.includes('"event":"token_renewed"'), 'by a renewal')
  t.ok((decodeJwt(second).exp ?? 0) > (decodeJwt(first).exp ?? 0), 'with the later token')
  t.equal(statSync(file).mode & 0o777, 0o600)

  child.kill('SIGTERM')
  await once(child, 'exit')
  t.same(readdirSync(dir), [], 'removed at exit')
  const fetched = await runCli(['token'], env)
  t.equal(fetched.code, 0)
  t.match(fetched.stdout, /^ey/)
  t.not(fetched.stdout, `${second}\n`, 'without the file, token fetches a new one')

  // A JWT in the file that has expired is not handed out.
  const { jwt } = await import('./helpers/token-endpoint.js')
  writeFileSync(file, await jwt(-60))
  const stale = await runCli(['token'], env)
  t.equal(stale.code, 0)
  t.not(stale.stdout.trim(), readFileSync(file, 'utf8'), 'an expired token in the file is replaced by a fresh one')

  const nowhere = await runCli(['serve'], { ...env, BEARER_PROXY_TOKEN_FILE: join(dir, 'missing', 'deeper', 'token') })
  t.equal(nowhere.code, 2)
  t.match(nowhere.stderr, /BEARER_PROXY_TOKEN_FILE: cannot write in the directory of .*missing\/deeper\/token \(ENOENT\)/)
})
