import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { FLAGS } from '../src/config.js'
import { moduleRecorder } from './helpers/loads.js'
import { baseEnv, CLI, cleanDirectory, runCli, spawnCli, startApiOf, startIdentity, waitForLine } from './helpers/stack.js'

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }

t.test('--help lists the commands, every flag with its variable, the most used variables, and where the rest are', async (t) => {
  const help = await runCli(['--help'], {})
  t.equal(help.code, 0)
  t.match(help.stdout, /^Usage: bearer-proxy \[command\] \[flags\]/)
  for (const command of ['serve', 'check', 'token', 'health']) t.match(help.stdout, new RegExp(`^  ${command} `, 'm'))
  for (const [flag, { setting }] of Object.entries(FLAGS)) t.match(help.stdout, new RegExp(`^  ${flag} .*\\(${setting}\\)$`, 'm'), flag)
  for (const variable of ['AUTH', 'TOKEN_URL', 'CLIENT_ID', 'INBOUND_KEY', 'LOG_FORMAT', 'TOKEN_FILE']) t.match(help.stdout, new RegExp(`^  ${variable} `, 'm'))
  t.match(help.stdout, /--env-file PATH/)
  t.match(help.stdout, /README's "Configuration" section/)
  t.equal((await runCli(['-h'], {})).stdout, help.stdout)
  t.equal((await runCli(['--version'], {})).stdout, `${pkg.version}\n`)
})

t.test('--help and --version load nothing but the one-file dist/cli.js (they answer as fast as node starts)', async (t) => {
  // A module hook records every file node loads; --help and --version must not reach node_modules.
  const recorder = moduleRecorder()
  for (const flag of ['--version', '--help']) {
    recorder.reset()
    const result = spawnSync('env', ['-u', 'NODE_OPTIONS', process.execPath, '--import', recorder.register, CLI, flag], { cwd: cleanDirectory(), encoding: 'utf8' })
    t.equal(result.status, 0, result.stderr)
    const names = recorder.loaded()
    // The hook sees the bundle itself: it would see anything else loaded from a file.
    t.same(names, ['dist/cli.js'], `${flag} loads ${names.join(', ')}`)
  }
})

t.test('a mistyped command, flag, setting or value gets "did you mean", exit 2', async (t) => {
  const cases: Array<[string[], Record<string, string>, RegExp]> = [
    [['serv'], {}, /unknown command "serv"; did you mean serve\?/],
    [['chekc'], {}, /unknown command "chekc"; did you mean check\?/],
    [['frobnicate'], {}, /unknown command "frobnicate"\nRun bearer-proxy --help/],
    [['--prot', '80'], {}, /unknown flag --prot; did you mean --port\?/],
    [['--upstrem=http://x'], {}, /unknown flag --upstrem; did you mean --upstream\?/],
    [['--log_level', 'debug'], {}, /unknown flag --log_level; did you mean --log-level\?/],
    [['--env'], {}, /unknown flag --env; did you mean --env-file\?/],
    [['--verbose'], {}, /unknown flag --verbose\nRun bearer-proxy --help/],
    [['--port'], {}, /--port needs a value \(PORT\)/],
    [['check'], { BEARER_PROXY_UPSTRAEM: 'http://x', BEARER_PROXY_TOKEN_URL: 'http://x/t', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's' },
      /BEARER_PROXY_UPSTRAEM: unknown setting; did you mean BEARER_PROXY_UPSTREAM\?/],
    [['check'], { BEARER_PROXY_CLIENTSECRET: 's', BEARER_PROXY_TOKEN_URL: 'http://x/t', BEARER_PROXY_CLIENT_ID: 'c' },
      /BEARER_PROXY_CLIENTSECRET: unknown setting; did you mean BEARER_PROXY_CLIENT_SECRET\?/],
    [['check'], { BEARER_PROXY_AUTH: 'runia', BEARER_PROXY_UPSTREAM: 'http://x' }, /BEARER_PROXY_AUTH: must be equal to one of the allowed values: .*; did you mean runai\?/],
    [['check'], { BEARER_PROXY_GRANT: 'client_credential', BEARER_PROXY_TOKEN_URL: 'http://x/t' }, /did you mean client_credentials\?/]
  ]
  for (const [args, env, expected] of cases) {
    const result = await runCli(args, env)
    t.equal(result.code, 2, args.join(' '))
    t.match(result.stderr, expected)
  }
  const once = await runCli(['check'], { BEARER_PROXY_CLIENTSECRET: 's', BEARER_PROXY_TOKEN_URL: 'http://x/t', BEARER_PROXY_CLIENT_ID: 'c' })
  t.notMatch(once.stderr, /CLIENT_SECRET: required/, 'the misspelling is reported once, not also as the setting missing')
  const far = await runCli(['check'], { BEARER_PROXY_SOMETHING_ELSE: '1', BEARER_PROXY_TOKEN_URL: 'http://x/t', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's' })
  t.match(far.stderr, /BEARER_PROXY_SOMETHING_ELSE: unknown setting\n/, 'nothing suggested when nothing is close')
})

t.test('flags win over their variables: --port, --host, --upstream, --cluster (repeatable), --log-level', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const other = await startApiOf(t, idp)
  const taken = createServer()
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { taken.close() })
  const env = {
    ...baseEnv(idp, other),
    BEARER_PROXY_PORT: String((taken.address() as AddressInfo).port),
    BEARER_PROXY_HOST: '0.0.0.0',
    BEARER_PROXY_CLUSTERS: 'env-only=http://127.0.0.1:1',
    BEARER_PROXY_LOG_LEVEL: 'silent'
  }
  const child = spawnCli(['serve', '--port', '0', '--host=127.0.0.1', '--upstream', api.url, '--cluster', `a=${api.url}/a`, `--cluster=b=${other.url}/b`, '--log-level', 'info'], env)
  t.teardown(() => { child.kill('SIGKILL') })
  const listening = JSON.parse(await waitForLine(child, /"event":"listening"/)) as { address: string, routes: string[] }
  t.match(listening.address, /^http:\/\/127\.0\.0\.1:\d+$/, '--host and --port, not the taken port on 0.0.0.0')
  t.same(listening.routes.sort(), [`/ -> ${api.url}/`, `/clusters/a -> ${api.url}/a`, `/clusters/b -> ${other.url}/b`].sort(), '--cluster twice replaces CLUSTERS')
  const answer = await request(`${listening.address}/hello`)
  t.equal(answer.statusCode, 200)
  await answer.body.dump()
  t.equal(api.seen.at(-1)?.url, '/hello', '--upstream, not BEARER_PROXY_UPSTREAM')
  t.equal(other.seen.length, 0)
})

t.test('--socket serves on a unix socket; a bad flag value is reported as the flag', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const socket = join(mkdtempSync(join(tmpdir(), 'bearer-proxy-sock-')), 'proxy.sock')
  const child = spawnCli(['--socket', socket], { ...baseEnv(idp, api), BEARER_PROXY_PORT: '1' })
  t.teardown(() => { child.kill('SIGKILL') })
  t.match(await waitForLine(child, /"event":"listening"/), `"address":"${socket}"`)
  const { Agent } = await import('undici')
  const agent = new Agent({ connect: { socketPath: socket } })
  t.teardown(() => agent.close())
  const answer = await request('http://localhost/over-the-socket', { dispatcher: agent })
  t.equal(answer.statusCode, 200)
  await answer.body.dump()

  const bad = await runCli(['check', '--port', 'eighty', '--upstream', 'ftp://x', '--cluster', 'no-url'], { ...baseEnv(idp, api) })
  t.equal(bad.code, 2)
  t.match(bad.stderr, /^bearer-proxy:\s+--port: must be integer$/m)
  t.match(bad.stderr, /^bearer-proxy:\s+--upstream: must be an http:\/\/ or https:\/\/ URL$/m)
  t.match(bad.stderr, /^bearer-proxy:\s+--cluster: expected name=url/m)
  t.notMatch(bad.stderr, /BEARER_PROXY_(PORT|UPSTREAM|CLUSTERS)/, 'named as typed')
})
