import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { loadConfig } from '../src/config.js'
import { assertNoSecret, fragments } from './helpers/secrets.js'
import { afterFetch, CLIENT, LogCapture, runCli, startApiOf, startIdentity } from './helpers/stack.js'
import type { TokenManager } from '../src/token/manager.js'
import { createLogger } from '../src/log.js'
import { startProxy } from '../src/server.js'

const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-sets-'))
/** A credential set named north, for the provider `idp`, as the YAML under `credentials:`. */
const northSet = (idp: { tokenUrl: string }): string => `  north:
    tokenUrl: ${idp.tokenUrl}
    clientId: ${CLIENT.clientId}
    clientSecret: ${CLIENT.clientSecret}
`
const write = (name: string, text: string): string => {
  writeFileSync(join(dir, name), text)
  return join(dir, name)
}

t.test('two credential sets behind one port: each route gets its own set\'s tokens, under load on both, one provider down', async (t) => {
  // Two providers; each API accepts only its own provider's tokens.
  const north = await startIdentity(t)
  const south = await startIdentity(t, { clients: [{ clientId: 'south-client', clientSecret: 'south-Secret-7731' }] })
  const northApi = await startApiOf(t, north)
  const southApi = await startApiOf(t, south)
  writeFileSync(join(dir, 'south-secret'), 'south-Secret-7731\n')
  const file = write('two.yaml', `port: 0
credentials:
${northSet(north)}  south:
    issuer: ${south.issuer}
    clientId: south-client
    clientSecretFile: ${join(dir, 'south-secret')}
routes:
  - prefix: /north
    upstream: ${northApi.url}/v1
    credentials: north
  - prefix: /south
    upstream: ${southApi.url}
    credentials: south
`)
  const config = loadConfig({ configFile: file, env: {} })
  t.same([...config.credentialSets.keys()], ['north', 'south'])
  const logs = new LogCapture()
  const proxy = await startProxy(config, createLogger('info', logs), { backoffMs: 60_000 })
  t.teardown(() => proxy.close())

  // Concurrent load on both routes.
  const paths = Array.from({ length: 60 }, (_, i) => i % 2 === 0 ? `/north/items/${i}` : `/south/items/${i}`)
  const answers = await Promise.all(paths.map(async (path) => {
    const answer = await request(`${proxy.address}${path}`)
    await answer.body.dump()
    return answer.statusCode
  }))
  t.same(answers, paths.map(() => 200), 'all 60 answered 200')
  t.equal(northApi.seen.length, 30)
  t.equal(southApi.seen.length, 30)
  t.ok(northApi.seen.every((seen) => seen.authorized && seen.sub === CLIENT.clientId && seen.url.startsWith('/v1/items/')), 'north saw only north\'s tokens')
  t.ok(southApi.seen.every((seen) => seen.authorized && seen.sub === 'south-client'), 'south saw only south\'s tokens')
  t.equal(north.tokenRequests, 1, 'one token request per set')
  t.equal(south.tokenRequests, 1)

  const ready = await request(`${proxy.address}/-/ready`)
  t.equal(ready.statusCode, 200)
  t.match(await ready.body.json(), { ready: true, routes: ['north', 'south'] })
  const metrics = await (await request(`${proxy.address}/-/metrics`)).body.text()
  t.match(metrics, /bearer_proxy_token_fetches_total\{credentials="north",result="success"\} 1/)
  t.match(metrics, /bearer_proxy_token_ready\{credentials="south"\} 1/)

  // South's provider goes down and its token is revoked: south answers 503, north keeps answering 200.
  south.mode = 'down'
  southApi.revoked.add(southApi.seen[0]?.jti as string)
  const [northAfter, southAfter] = await Promise.all([request(`${proxy.address}/north/x`), request(`${proxy.address}/south/x`)])
  t.equal(northAfter.statusCode, 200)
  await northAfter.body.dump()
  t.equal(southAfter.statusCode, 503)
  t.match(await southAfter.body.json(), { error: 'token_unavailable' })
  const notReady = await request(`${proxy.address}/-/ready`)
  t.equal(notReady.statusCode, 503)
  t.match(await notReady.body.json(), { ready: false, credentials: [{ name: 'south', reason: /token endpoint .* is unreachable|answered/ }] })
  t.match(logs.text, /"set":"south"/, 'token lines name their set')
  assertNoSecret(t, 'the log', logs.text, fragments([CLIENT.clientSecret, 'south-Secret-7731', ...northApi.seen.concat(southApi.seen).map((seen) => (seen.headers.authorization ?? '').slice(7))]))
})

t.test('check and token take --credentials NAME: the only set by default, else an error listing the names', async (t) => {
  const north = await startIdentity(t, { accessTokenTtl: 600 })
  const northApi = await startApiOf(t, north)
  const two = write('cli.yaml', `credentials:
${northSet(north)}  other:
    tokenUrl: ${north.tokenUrl}
    clientId: ${CLIENT.clientId}
    clientSecret: ${CLIENT.clientSecret}
routes:
  - { prefix: /north, upstream: "${northApi.url}", credentials: north }
`)
  const ambiguous = await runCli(['check', '--config', two], {})
  t.equal(ambiguous.code, 2)
  t.match(ambiguous.stderr, /several credential sets \(north, other\): choose one with --credentials NAME/)
  const check = await runCli(['check', '--config', two, '--credentials', 'north'], {})
  t.equal(check.code, 0, check.stderr + check.stdout)
  t.match(check.stdout, `ok: upstream north (${northApi.url}/) answered 200, token accepted`)
  const token = await runCli(['token', '--config', two, '--credentials', 'north'], {})
  t.match(token.stdout, /^ey[\w-]+\.[\w-]+\.[\w-]+\n$/)
  const typo = await runCli(['token', '--config', two, '--credentials', 'nort'], {})
  t.equal(typo.code, 2)
  t.match(typo.stderr, /--credentials nort: no such credential set \(north, other\); did you mean north\?/)
})

t.test('credential sets and routes are checked: file, line and key, once each, never a value', async (t) => {
  // One file with a problem of each kind: every one named once, in the file's order, the structure's (keys that do not exist) with the rest.
  const sets = (extraNorth: string, extraRoute: string): string => `clientId: top-level
credentials:
  north:
    tokenUrl: http://127.0.0.1:1/token
    clientId: c
    clientSecret: Hunter2-secret${extraNorth}
  south:
    auth: runia
    upstream: http://127.0.0.1:2
routes:
  - prefix: /north
    upstream: http://127.0.0.1:3
    credentials: nrth
  - prefix: /-/evil
    credentials: north
  - prefix: /dup
    credentials: north
  - prefix: /dup
    upstream: http://127.0.0.1:4
    credentials: north${extraRoute}
`
  const result = await runCli(['check', '--config', write('bad-sets.yaml', sets('\n    port: 9000', '\n    readonly: true'))], {})
  t.equal(result.code, 2)
  const lines = result.stderr.split('\n').filter((line) => line.includes('bad-sets.yaml:'))
  t.match(lines, [
    /bad-sets\.yaml:1: clientId: with credential sets/,
    /bad-sets\.yaml:7: credentials\.north\.port: not a setting of a credential set/,
    /bad-sets\.yaml:9: credentials\.south\.auth: must be equal to one of the allowed values/,
    /bad-sets\.yaml:14: routes\[0\]\.credentials: names no credential set \(the sets are north, south\); did you mean north\?/,
    /bad-sets\.yaml:15: routes\[1\]\.prefix: a path of letters/,
    /bad-sets\.yaml:17: routes\[2\]\.upstream: required/,
    /bad-sets\.yaml:22: routes\[3\]\.readonly: not a key of a route/
  ], 'every problem, in the file\'s order')
  t.equal(lines.length, 7, 'each once, and no consequence of one as another (the second /dup is the only one built)')
  t.notMatch(result.stderr, /Hunter2/)

  const more = await runCli(['serve', '--config', write('bad-sets-2.yaml', sets('', ''))], {})
  t.equal(more.code, 2)
  for (const line of [
    /bad-sets-2\.yaml:1: clientId: with credential sets, credentials and upstreams belong to a set/,
    /bad-sets-2\.yaml:8: credentials\.south\.auth: must be equal to one of the allowed values: .*; did you mean runai\?/,
    /bad-sets-2\.yaml:13: routes\[0\]\.credentials: names no credential set \(the sets are north, south\); did you mean north\?/,
    /bad-sets-2\.yaml:14: routes\[1\]\.prefix: a path of letters/,
    /bad-sets-2\.yaml:16: routes\[2\]\.upstream: required \(or an upstream in credential set north\)/
  ]) t.match(more.stderr, line)
  t.notMatch(more.stderr, /Hunter2|BEARER_PROXY_/)
})

t.test('a route\'s clusters in the file: a mapping of names to URLs, or auto; problems name the line and the cluster, never a value', async (t) => {
  const file = write('route-clusters.yaml', `credentials:
  north: { tokenUrl: "https://idp.example/token", clientId: c, clientSecret: Hunter2-in-file }
routes:
  - prefix: /a
    upstream: https://a.example
    credentials: north
    clusters: { "bad name": "https://x.example", gpu: "ftp://y.example", cpu: "https://u:Hunter2@z.example" }
`)
  const result = await runCli(['check', '--config', file], {})
  t.equal(result.code, 2)
  for (const line of [
    /route-clusters\.yaml:7: routes\[0\]\.clusters: expected name=url,name=url/,
    /route-clusters\.yaml:7: routes\[0\]\.clusters \(gpu\): must be an http:\/\/ or https:\/\/ URL/,
    /route-clusters\.yaml:7: routes\[0\]\.clusters \(cpu\): must not carry a user name or password/
  ]) t.match(result.stderr, line)
  t.notMatch(result.stderr, /Hunter2/)
  const nested = await runCli(['check', '--config', write('route-clusters-nested.yaml', `credentials:
  north: { tokenUrl: "https://idp.example/token", clientId: c, clientSecret: s }
routes:
  - { prefix: /b, upstream: "https://b.example", credentials: north, clusters: [ { nested: true } ] }
`)], {})
  t.equal(nested.code, 2)
  t.match(nested.stderr, /route-clusters-nested\.yaml:4: routes\[0\]\.clusters: expected auto, or a mapping of names to URLs/)

  const good = write('route-clusters-good.yaml', `credentials:
  north: { tokenUrl: "https://idp.example/token", clientId: c, clientSecret: s }
routes:
  - { prefix: /c, upstream: "https://c.example", credentials: north, clusters: { gpu: "https://gpu.example/base" } }
  - { prefix: /d, upstream: "https://d.example", credentials: north, clusters: auto }
  - { prefix: /e, upstream: "https://e.example", credentials: north }
`)
  const config = loadConfig({ configFile: good, env: {} })
  t.same(config.prefixRoutes.map((route) => [route.name, [...route.clusters].map(([name, url]) => `${name}=${url.href}`), route.discoverClusters]), [
    ['c', ['gpu=https://gpu.example/base'], false],
    ['d', [], true],
    ['e', [], false]
  ])
})

t.test('config/two-apis.yaml, filled in, serves a Run:ai control plane and an API Connect platform with their own tokens', async (t) => {
  const { readFileSync } = await import('node:fs')
  const { APIC, RUNAI, startApiConnect, startRunai } = await import('./helpers/emulators.js')
  const runai = await startRunai(t)
  const apic = await startApiConnect(t, { expiresIn: 600 })
  writeFileSync(join(dir, 'runai-secret'), RUNAI.client.secret)
  writeFileSync(join(dir, 'apic-key'), APIC.apiKey)
  writeFileSync(join(dir, 'apic-secret'), APIC.client.secret)
  const filled = readFileSync(new URL('../config/two-apis.yaml', import.meta.url), 'utf8')
    .replace(/^port: .*$/m, 'port: 0')
    .replace('https://mycompany.run.ai', runai.url)
    .replace('https://platform-api.apic.example.com', apic.url)
    .replace('my-access-key', RUNAI.client.id)
    .replace('/run/secrets/runai-client-secret', join(dir, 'runai-secret'))
    .replace('/run/secrets/apic-api-key', join(dir, 'apic-key'))
    .replace('599b7aef-8841-4ee2-88a0-84d49c4d6ff2', APIC.client.id)
    .replace('/run/secrets/apic-toolkit-secret', join(dir, 'apic-secret'))
  const config = loadConfig({ configFile: write('two-apis.yaml', filled), env: {} })
  const proxy = await startProxy(config, createLogger('silent', new LogCapture()))
  t.teardown(() => proxy.close())
  for (const [path, emulator, served] of [['/runai/api/v1/projects', runai, '/api/v1/projects'], ['/apic/api/orgs', apic, '/api/orgs']] as const) {
    const answer = await request(`${proxy.address}${path}`)
    t.equal(answer.statusCode, 200, path)
    await answer.body.dump()
    t.same(emulator.served, [served], 'each emulator accepts only its own tokens, and got its request')
  }
  t.equal(runai.calls[0]?.path, '/api/v2/token')
  t.equal(apic.calls[0]?.body.grant_type, 'api_key')
})

t.test('a route\'s own policy: readOnly, allowPaths and denyPaths below its prefix, besides the top level\'s', async (t) => {
  const north = await startIdentity(t)
  const api = await startApiOf(t, north)
  const file = write('policy.yaml', `port: 0
denyPaths: [/open/secret-area]
allowedOrigins: [https://app.example]
credentials:
${northSet(north)}routes:
  - prefix: /ro
    upstream: ${api.url}
    credentials: north
    readOnly: true
    allowPaths: [/api/v1/projects, /api/v1/clusters]
  - prefix: /open
    upstream: ${api.url}/open
    credentials: north
    denyPaths: /api/v1/users
`)
  const proxy = await startProxy(loadConfig({ configFile: file, env: {} }), createLogger('silent', new LogCapture()))
  t.teardown(() => proxy.close())
  const cases: Array<[string, string, number, RegExp?]> = [
    ['GET', '/ro/api/v1/projects/7', 200],
    ['POST', '/ro/api/v1/projects', 403, /POST is not forwarded: route ro is readOnly/],
    ['GET', '/ro/api/v1/users', 403, /route ro's allowPaths \/ denyPaths/],
    ['GET', '/ro/API/V1/PROJECTS', 200],
    ['POST', '/open/api/v1/projects', 200],
    ['GET', '/open/api/v1/users/1', 403, /route open's allowPaths \/ denyPaths/],
    ['GET', '/open/API/v1/Users', 403],
    ['GET', '/open/secret-area/x', 403, /BEARER_PROXY_ALLOW_PATHS \/ DENY_PATHS/]
  ]
  for (const [method, path, status, message] of cases) {
    const answer = await request(`${proxy.address}${path}`, { method, body: method === 'POST' ? '{}' : undefined })
    t.equal(answer.statusCode, status, `${method} ${path}`)
    const body = await answer.body.text()
    if (message !== undefined) t.match(body, message)
  }
  t.same(api.seen.map((seen) => `${seen.method} ${seen.url}`), ['GET /api/v1/projects/7', 'GET /API/V1/PROJECTS', 'POST /open/api/v1/projects'], 'nothing refused reached the API')
  // Siblings of the denied path, over a raw socket: other encodings and spellings never reach the API.
  const { rawHttp } = await import('./helpers/stack.js')
  const seen = api.seen.length
  for (const target of ['/open/api/v1/%75sers', '/open/api/v1/Users/', '/open/api//v1/users', '/open/api/v1/./users', '/open/api/v1/x/../users', '/open/api/v1/users;x', '/open/api%2fv1/users', '/ro/api/v1/projects/../users']) {
    const answer = await rawHttp(proxy.address, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`)
    t.match(answer, /^HTTP\/1\.1 40[03] /, target)
  }
  t.equal(api.seen.length, seen, 'none reached the API')
  // A browser's preflight is told the methods that route forwards.
  for (const [path, methods] of [['/ro/api/v1/projects', 'GET, HEAD, OPTIONS'], ['/open/api/v1/projects', 'GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE']]) {
    const preflight = await request(`${proxy.address}${path as string}`, { method: 'OPTIONS', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' } })
    t.equal(preflight.statusCode, 204)
    t.equal(preflight.headers['access-control-allow-methods'], methods, path as string)
    await preflight.body.dump()
  }
  // A method override is a write too.
  const override = await request(`${proxy.address}/ro/api/v1/projects?_method=DELETE`)
  t.equal(override.statusCode, 403)
  await override.body.dump()
})

t.test('TOKEN_FILE holds the first set\'s token; token --credentials of another set does not hand it out', async (t) => {
  const { readFileSync } = await import('node:fs')
  const { decodeJwt } = await import('jose')
  const north = await startIdentity(t, { accessTokenTtl: 600 })
  const south = await startIdentity(t, { accessTokenTtl: 600, clients: [{ clientId: 'south-client', clientSecret: 'south-Secret-7732' }] })
  const api = await startApiOf(t, north)
  const tokenFile = join(dir, 'sets-token')
  const file = write('sets-file.yaml', `port: 0
tokenFile: ${tokenFile}
credentials:
  north: { tokenUrl: "${north.tokenUrl}", clientId: ${CLIENT.clientId}, clientSecret: ${CLIENT.clientSecret} }
  south: { tokenUrl: "${south.tokenUrl}", clientId: south-client, clientSecret: south-Secret-7732 }
routes:
  - { prefix: /north, upstream: "${api.url}", credentials: north }
`)
  const proxy = await startProxy(loadConfig({ configFile: file, env: {} }), createLogger('silent', new LogCapture()))
  t.teardown(() => proxy.close())
  const { afterFetch } = await import('./helpers/stack.js')
  await afterFetch(proxy.tokens, () => proxy.tokens.status().ready, 5000, 'north\'s token')
  t.equal(decodeJwt(readFileSync(tokenFile, 'utf8')).sub, CLIENT.clientId, 'the first set\'s token')
  const southToken = await runCli(['token', '--config', file, '--credentials', 'south'], {})
  t.equal(southToken.code, 0, southToken.stderr)
  t.equal(decodeJwt(southToken.stdout.trim()).sub, 'south-client', 'south\'s own token, not the file\'s')
  const northToken = await runCli(['token', '--config', file, '--credentials', 'north'], {})
  t.equal(northToken.stdout.trim(), readFileSync(tokenFile, 'utf8'), 'north\'s, from the file')
})

t.test('with several sets, the ready line comes when /-/ready answers 200; until then each first token names the sets still waiting', async (t) => {
  const north = await startIdentity(t)
  const south = await startIdentity(t, { clients: [{ clientId: 'south-client', clientSecret: 'south-Secret-7731' }] })
  south.mode = 'down'
  const file = write('ready.yaml', `port: 0
credentials:
${northSet(north)}  south:
    tokenUrl: ${south.tokenUrl}
    clientId: south-client
    clientSecret: south-Secret-7731
routes:
  - { prefix: /north, upstream: "http://127.0.0.1:1", credentials: north }
  - { prefix: /south, upstream: "http://127.0.0.1:1", credentials: south }
`)
  const logs = new LogCapture()
  const proxy = await startProxy(loadConfig({ configFile: file, env: {} }), createLogger('info', logs), { backoffMs: 20 })
  t.teardown(() => proxy.close())
  const [northTokens, southTokens] = [proxy.setTokens.get('north'), proxy.setTokens.get('south')] as [TokenManager, TokenManager]
  await afterFetch(northTokens, () => northTokens.current() !== undefined, 5000, 'north\'s token')
  t.match(logs.events('waiting'), [{ sets: ['south'], msg: 'not ready yet: credential set south has no token yet' }])
  t.same(logs.events('ready'), [], 'no ready line while south has no token')
  t.equal((await request(`${proxy.address}/-/ready`)).statusCode, 503)
  south.mode = 'normal'
  await afterFetch(southTokens, () => southTokens.current() !== undefined, 10_000, 'south\'s token')
  t.match(logs.events('ready'), [{ msg: /^ready: every credential set holds its token; forwarding / }])
  t.equal((await request(`${proxy.address}/-/ready`)).statusCode, 200, 'the line and /-/ready agree')
})
