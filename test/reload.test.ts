import { mkdtempSync, renameSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { CLIENT, collect, spawnCli, startApiOf, startIdentity, waitForLine } from './helpers/stack.js'
import { startTokenEndpoint } from './helpers/token-endpoint.js'
import { startEcho } from './helpers/upstream.js'

const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-reload-'))
/** Written to a temporary name and renamed over, as editors and Kubernetes do. */
const write = (name: string, text: string): string => {
  writeFileSync(join(dir, `.${name}.tmp`), text)
  renameSync(join(dir, `.${name}.tmp`), join(dir, name))
  return join(dir, name)
}

t.test('reload: a changed credential set gets new tokens, an unchanged one keeps its own, a bad file is refused, under load nothing fails', async (t) => {
  const north = await startIdentity(t, {
    accessTokenTtl: 600,
    clients: [CLIENT, { clientId: 'north-second', clientSecret: 'north-Second-5520' }]
  })
  // South: a token endpoint that accepts either of its client's two secrets (a rotation), and an API that echoes the token.
  const secrets = new Set(['south-Secret-8841', 'south-Rotated-9952'])
  let issued = 0
  const south = await startTokenEndpoint(t, (call) => secrets.has(String(call.fields.client_secret))
    ? { body: { access_token: `south-token-${++issued}`, token_type: 'Bearer', expires_in: 600 } }
    : { status: 401, body: { error: 'invalid_client' } })
  const northApi = await startApiOf(t, north)
  const southApi = await startEcho(t)
  write('south-secret', 'south-Secret-8841\n')
  const yaml = (northClient: string, northSecret: string, extra = ''): string => `port: 0
credentials:
  north:
    tokenUrl: ${north.tokenUrl}
    clientId: ${northClient}
    clientSecret: ${northSecret}
  south:
    tokenUrl: ${south.url}/token
    clientId: south-client
    clientSecretFile: ${join(dir, 'south-secret')}
routes:
  - { prefix: /north, upstream: "${northApi.url}", credentials: north }
  - { prefix: /south, upstream: "${southApi.url}", credentials: south }
${extra}`
  const file = write('proxy.yaml', yaml(CLIENT.clientId, CLIENT.clientSecret))
  const child = spawnCli(['serve', '--config', file], {})
  const output = collect(child)
  t.teardown(() => { child.kill('SIGKILL') })
  const address = (JSON.parse(await waitForLine(child, /"event":"listening"/)) as { address: string }).address
  await waitForLine(child, /"event":"ready"/)

  // Load on both routes for the whole test.
  let running = true
  const failures: string[] = []
  let sent = 0
  const load = Promise.all(Array.from({ length: 4 }, async (_, worker) => {
    while (running) {
      const path = worker % 2 === 0 ? '/north/x' : '/south/y'
      const answer = await request(`${address}${path}`)
      await answer.body.dump()
      sent++
      if (answer.statusCode !== 200) failures.push(`${path} ${answer.statusCode}`)
    }
  }))

  // SIGHUP after north's client changed: north's token is replaced, south's kept.
  write('proxy.yaml', yaml('north-second', 'north-Second-5520'))
  child.kill('SIGHUP')
  // The watcher sees the file change too: the reload that found north changed is the one to read.
  const reloaded = JSON.parse(await waitForLine(child, /"event":"reloaded".*"changed":\["north"\]/)) as { changed: string[], needsRestart: string[], msg: string }
  t.same(reloaded.changed, ['north'])
  t.same(reloaded.needsRestart, [])
  const seenBefore = northApi.seen.length
  const afterReload = await request(`${address}/north/after`)
  t.equal(afterReload.statusCode, 200)
  await afterReload.body.dump()
  t.equal(northApi.seen.at(-1)?.sub, 'north-second', 'north\'s new credentials are used at once')
  t.ok(northApi.seen.slice(seenBefore).every((seen) => seen.sub === 'north-second' || seen.url !== '/north/after'))

  // A bad file: its problems are logged, the running configuration keeps serving.
  write('proxy.yaml', yaml('north-second', 'north-Second-5520', 'portt: 1\n'))
  child.kill('SIGHUP')
  t.match(await waitForLine(child, /"event":"reload_refused"/), /portt: unknown setting; did you mean port\?/)

  // Without a signal: south's secret file rotated (renamed over, as a Kubernetes Secret is) is noticed, south gets a new token.
  t.equal(await (await request(`${address}/south/before`)).body.text(), 'Bearer south-token-1')
  write('proxy.yaml', yaml('north-second', 'north-Second-5520'))
  write('south-secret', 'south-Rotated-9952\n')
  const watched = JSON.parse(await waitForLine(child, /"event":"reloaded".*"changed":\["south"\]/, 15_000)) as { changed: string[], cause: string }
  t.same(watched.changed, ['south'])
  t.match(watched.cause, /changed/)
  t.equal(await (await request(`${address}/south/after`)).body.text(), 'Bearer south-token-2', 'the old token is not used again')
  t.equal(south.calls.at(-1)?.fields.client_secret, 'south-Rotated-9952')

  running = false
  await load
  t.ok(sent > 20, `${sent} requests during the reloads`)
  t.same(failures, [], 'no request failed')
  t.equal(south.calls.length, 2, 'south asked for a token at start and after its secret changed, not when north changed')
  t.notMatch(output().stdout, /north-Second-5520|south-Secret-8841|south-Rotated-9952|south-token-/, 'no secret or token in the log')
})

t.test('reload: ./.env changed; a change that takes a restart is named, the rest applied', async (t) => {
  const north = await startIdentity(t, { accessTokenTtl: 600 })
  const api = await startApiOf(t, north)
  // ./.env of the directory it runs in, read without --env-file, is watched too.
  write('.env', `BEARER_PROXY_TOKEN_URL=${north.tokenUrl}\nBEARER_PROXY_CLIENT_ID=${CLIENT.clientId}\nBEARER_PROXY_CLIENT_SECRET=${CLIENT.clientSecret}\nBEARER_PROXY_UPSTREAM=${api.url}\nBEARER_PROXY_PORT=0\n`)
  const child = spawnCli(['serve'], {}, dir)
  t.teardown(() => { child.kill('SIGKILL') })
  await waitForLine(child, /"event":"ready"/)
  write('.env', `BEARER_PROXY_TOKEN_URL=${north.tokenUrl}\nBEARER_PROXY_CLIENT_ID=${CLIENT.clientId}\nBEARER_PROXY_CLIENT_SECRET=${CLIENT.clientSecret}\nBEARER_PROXY_UPSTREAM=${api.url}/v2\nBEARER_PROXY_PORT=0\nBEARER_PROXY_READ_ONLY=true\n`)
  const line = JSON.parse(await waitForLine(child, /"event":"reloaded"/, 15_000)) as { changed: string[], needsRestart: string[], msg: string }
  t.same(line.changed, [])
  t.same(line.needsRestart, ['routes', 'policy'])
  t.match(line.msg, /routes, policy changed too, which takes a restart/)
})
