import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { SETTINGS } from '../src/config/settings.js'
import { fileKey } from '../src/config/file.js'
import { CLIENT, runCli, spawnCli, startApiOf, startIdentity, waitForLine } from './helpers/stack.js'

const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-config-file-'))
const write = (name: string, text: string): string => {
  writeFileSync(join(dir, name), text)
  return join(dir, name)
}

t.test('every setting has one key in the file: its variable in camelCase', async (t) => {
  const keys = Object.keys(SETTINGS).map(fileKey)
  t.equal(new Set(keys).size, keys.length, 'no two settings share a key')
  t.equal(fileKey('CLIENT_SECRET_FILE'), 'clientSecretFile')
  t.equal(fileKey('UPSTREAM'), 'upstream')
  for (const key of keys) t.match(key, /^[a-z][A-Za-z]*$/)
})

t.test('--config PATH (YAML): lists as sequences, clusters as a mapping, secrets from files; the environment and flags win over it', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const secret = write('client-secret', `${CLIENT.clientSecret}\n`)
  const file = write('proxy.yaml', `# bearer-proxy in front of one API and two clusters
tokenUrl: ${idp.tokenUrl}
clientId: ${CLIENT.clientId}
clientSecretFile: ${secret}
upstream: ${api.url}
clusters:
  gpu-a: ${api.url}/a
  gpu-b: ${api.url}/b
port: 1
readOnly: true
denyPaths: [/private, /admin]
logLevel: warn
`)
  // ./.env beside it is not read when --config is given.
  const cwd = mkdtempSync(join(tmpdir(), 'bearer-proxy-config-cwd-'))
  writeFileSync(join(cwd, '.env'), 'BEARER_PROXY_UPSTREAM=http://127.0.0.1:9\n')
  const child = spawnCli(['serve', '--config', file, '--port', '0'], { BEARER_PROXY_LOG_LEVEL: 'info' }, cwd)
  t.teardown(() => { child.kill('SIGKILL') })
  const listening = JSON.parse(await waitForLine(child, /"event":"listening"/)) as { address: string, routes: string[] }
  t.same(listening.routes.sort(), [`/ -> ${api.url}/`, `/clusters/gpu-a -> ${api.url}/a`, `/clusters/gpu-b -> ${api.url}/b`].sort())
  t.match(listening.address, /:\d+$/)
  t.not(new URL(listening.address).port, '1', '--port wins over the file')
  const read = await request(`${listening.address}/clusters/gpu-b/jobs`)
  t.equal(read.statusCode, 200, 'the secret file\'s client got a token the API accepts')
  await read.body.dump()
  t.equal(api.seen.at(-1)?.url, '/b/jobs')
  const write_ = await request(`${listening.address}/jobs`, { method: 'POST', body: '{}' })
  t.equal(write_.statusCode, 403, 'readOnly: true')
  await write_.body.dump()
  const denied = await request(`${listening.address}/admin/users`)
  t.equal(denied.statusCode, 403, 'denyPaths as a YAML list')
  await denied.body.dump()

  const json = write('proxy.json', JSON.stringify({ tokenUrl: idp.tokenUrl, clientId: CLIENT.clientId, clientSecret: CLIENT.clientSecret, upstream: api.url, checkPath: '/health' }))
  const check = await runCli(['check', '--config', json], {})
  t.equal(check.code, 0, check.stderr + check.stdout)
  t.match(check.stdout, `ok: upstream admin (${api.url}/health) answered 200, token accepted`)
  const overridden = await runCli(['check', '--config', json], { BEARER_PROXY_CLIENT_SECRET: 'not-the-secret-Q1' })
  t.equal(overridden.code, 1, 'a variable wins over the file')
  t.match(overridden.stderr, /invalid_client/)

  const health = await runCli(['health', '--config', write('health.yaml', `port: ${new URL(listening.address).port}\n`)], {})
  t.equal(health.code, 0, 'health reads where the proxy listens from the file too')
})

t.test('--config problems name the file, the line and the key, once each, exit 2, never a value', async (t) => {
  const cases: Array<[string, RegExp[]]> = [
    ['tokenUrl: http://127.0.0.1:1/token\nclientId: c\nclientScret: Hunter2-secret\nupstream: http://127.0.0.1:2\n',
      [/^bearer-proxy:\s+\S+bad1\.yaml:3: clientScret: unknown setting; did you mean clientSecret\?$/m]],
    ['tokenUrl: http://127.0.0.1:1/token\nclientId: c\nclientSecret: Hunter2-secret\nupstream:\n  url: http://x\nport: seventy\nclusters:\n  gpu-a: ftp://x\n',
      [/bad2\.yaml:4: upstream: expected a single value$/m]],
    ['tokenUrl: http://127.0.0.1:1/token\nclientId: c\nclientSecret: Hunter2-secret\nupstream: http://x\nport: seventy\nclusters:\n  gpu-a: ftp://x\nauth: runia\n',
      [/bad3\.yaml:5: port: must be integer$/m, /bad3\.yaml:6: clusters \(gpu-a\): must be an http:\/\/ or https:\/\/ URL$/m, /bad3\.yaml:8: auth: must be equal to one of the allowed values: .*; did you mean runai\?$/m]],
    ['clientSecret: "Hunter2-secret\nclientId: c\n', [/bad4\.yaml:\d+:\d+: /]],
    ['clientSecret: [Hunter2-secret, {a: 1}]\n', [/bad5\.yaml:1: clientSecret: expected a single value$/m]],
    ['- Hunter2-secret\n', [/bad6\.yaml: expected a mapping of settings/]],
    ['clientSecret: Hunter2-secret\nclientSecret: Hunter2-secret\n', [/bad7\.yaml:2:1: a key that this mapping already has$/m]],
    // Each YAML error whose parser message quotes the line: in the proxy's words instead.
    ['clientSecret: |Hunter2-secret\n', [/bad8\.yaml:1:\d+: something YAML does not expect here \(after \| or >/]],
    ['clientSecret: >Hunter2-secret\n  more\n', [/bad9\.yaml:1:\d+: something YAML does not expect/]],
    ['clientSecret: !Hunter2-secret x\n', [/bad10\.yaml:1:\d+: a tag \(!x\) that YAML does not know/]],
    ['clientSecret: "\\xHunter2-secret"\n', [/bad11\.yaml:1:\d+: a "quoted" value has a \\ escape/]],
    ['%Hunter2-secret\n---\nclientId: c\n', [/bad12\.yaml:1:\d+: a directive/]],
    ['clientSecret: @Hunter2-secret\n', [/bad13\.yaml:1:\d+: a plain value cannot start with/]],
    ['clientSecret: *Hunter2-secret\n', [/bad14\.yaml:1: clientSecret: expected a single value$/m]],
    ['clientSecret: Hunter2-secret\n\tclientId: c\n', [/bad15\.yaml:2:\d+: /]]
  ]
  for (const [index, [text, expected]] of cases.entries()) {
    const result = await runCli(['check', '--config', write(`bad${index + 1}.yaml`, text)], {})
    t.equal(result.code, 2, `bad${index + 1}`)
    for (const pattern of expected) t.match(result.stderr, pattern)
    t.notMatch(result.stderr, /Hunter2/, 'no value is quoted')
    t.notMatch(result.stderr, /BEARER_PROXY_/, 'settings named as written in the file')
  }
  const missing = await runCli(['check', '--config', join(dir, 'nowhere.yaml')], {})
  t.equal(missing.code, 2)
  t.match(missing.stderr, /--config \S+nowhere\.yaml: cannot read it \(ENOENT\)/)
})

t.test('every independent problem is named, once, at its cause and in file order; a consequence of one is not another', async (t) => {
  const lines = async (text: string, command = 'serve'): Promise<string[]> => {
    const result = await runCli([command, '--config', write(`every-${Math.random().toString(36).slice(2)}.yaml`, text)], {})
    t.equal(result.code, 2)
    return result.stderr.split('\n').filter((line) => /^bearer-proxy: {3}/.test(line)).map((line) => line.replace(/^bearer-proxy: {3}\S*?\.yaml/, 'file'))
  }
  const set = 'credentials:\n  north:\n    tokenUrl: http://127.0.0.1:1/token\n    clientId: c\n    clientSecret: s\n'
  t.same(await lines(`${set}    bogusKey: 1\nroutes:\n  - { prefix: /n, upstream: "http://127.0.0.1:2", credentials: nope }\n`), [
    'file:6: credentials.north.bogusKey: unknown setting',
    'file:8: routes[0].credentials: names no credential set (the sets are north)'
  ], 'an unknown key in a set, and a route naming a set that does not exist: both')
  t.same(await lines(`${set}routes:\n  - { prefix: /n, upstream: "http://127.0.0.1:2", credentials: nrth }\n  - { prefix: /m, upstream: "http://127.0.0.1:2", credentials: nort }\n`), [
    'file:7: routes[0].credentials: names no credential set (the sets are north); did you mean north?',
    'file:8: routes[1].credentials: names no credential set (the sets are north); did you mean north?'
  ], 'both misspelt sets, and no line blaming routes: as missing')
  t.same(await lines('port: seventy\nlogLevel: loud\ncredentials:\n  north:\n    tokenUrl: ftp://x\n    clientId: c\n  south:\n    auth: runia\n    clientId: d\n    clientSecret: s\nroutes:\n  - { prefix: /n, credentials: north }\n  - { prefix: "bad prefix", credentials: south }\n'), [
    'file:1: port: must be integer',
    'file:2: logLevel: must be equal to one of the allowed values: fatal, error, warn, info, debug, trace, silent',
    'file:4: credentials.north.clientSecret: required (or credentials.north.clientSecretFile) for AUTH=oidc GRANT=client_credentials',
    'file:5: credentials.north.tokenUrl: must be an http:// or https:// URL',
    'file:8: credentials.south.auth: must be equal to one of the allowed values: oidc, runai, runai-apptoken, apiconnect; did you mean runai?',
    'file:13: routes[1].prefix: a path of letters, digits and ".", "_", "~", "-" segments, not under /-/ or /clusters/'
  ], 'the top level\'s problems too; a URL refused is not also missing; a route of a set with problems is not one more')
  // Without a file: the environment's problems, each once.
  const env = await runCli(['serve'], { BEARER_PROXY_PORT: 'x', BEARER_PROXY_TOKEN_URL: 'ftp://x/token', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SCRET: 's', BEARER_PROXY_UPSTREAM: 'http://127.0.0.1:1' })
  t.same(env.stderr.split('\n').filter((line) => /^bearer-proxy: {3}/.test(line)), [
    'bearer-proxy:   BEARER_PROXY_CLIENT_SCRET: unknown setting; did you mean BEARER_PROXY_CLIENT_SECRET?',
    'bearer-proxy:   BEARER_PROXY_PORT: must be integer',
    'bearer-proxy:   BEARER_PROXY_TOKEN_URL: must be an http:// or https:// URL'
  ])
})
