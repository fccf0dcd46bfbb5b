import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { loadConfig } from '../src/config.js'
import { cleanDirectory } from './helpers/stack.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string, scripts: Record<string, string> }
/** Child processes without tap's loader in NODE_OPTIONS, as users run them. */
const userEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => key !== 'NODE_OPTIONS' && !key.startsWith('BEARER_PROXY_')))

t.test('the examples without a secret load as they are, with their files standing in', async (t) => {
  for (const name of ['runai-external-token', 'gcp-workload-identity', 'entra-workload-identity', 'keycloak-federated']) {
    const env: Record<string, string> = {}
    for (const line of readFileSync(join(root, 'config', `${name}.env`), 'utf8').split('\n')) {
      const match = /^(BEARER_PROXY_[A-Z_]+)=(.*)$/.exec(line)
      if (match === null) continue
      const [, key = '', value = ''] = match
      env[key] = value
      if (key.endsWith('_FILE')) {
        env[key] = join(mkdtempSync(join(tmpdir(), 'bearer-proxy-example-')), 'token')
        writeFileSync(env[key] as string, 'x.y.z')
      }
    }
    const config = loadConfig({ env, envFile: '/dev/null', forwarding: true })
    t.notOk(JSON.stringify(config.tokenSettings.credentials).includes('"secret":{'), `${name}: no secret configured`)
  }
})

t.test('npm start runs the CLI through node itself (no shebang needed, as on Windows), leaving --env-file to bearer-proxy', async (t) => {
  t.match(pkg.scripts.start, /^node .*-- dist\/cli\.js serve$/)
  // `npm start -- --env-file missing.env`, with the repository as the package and no .env read from it.
  const result = spawnSync('npm', ['start', '--prefix', root, '--', '--env-file', 'missing.env'], { encoding: 'utf8', cwd: cleanDirectory(), env: userEnv, timeout: 30_000 })
  t.equal(result.status, 2, result.stderr)
  t.match(result.stderr, /bearer-proxy:\s+--env-file missing\.env: cannot read it \(ENOENT\)/)
  t.notMatch(result.stderr, /node: missing\.env/)
})

t.test('installed without a clone, from the packed tarball: `bearer-proxy` is on PATH and runs', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-pack-'))
  // dist/ is already built by `npm test`; the tarball carries it, and no source.
  const packed = spawnSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: root, encoding: 'utf8', env: userEnv })
  t.equal(packed.status, 0, packed.stderr)
  const [{ filename, files }] = JSON.parse(packed.stdout) as [{ filename: string, files: Array<{ path: string }> }]
  const paths = files.map((file) => file.path)
  t.ok(paths.includes('dist/cli.js'))
  t.ok(paths.includes('config/runai.env'))
  t.notOk(paths.some((path) => /^(src|test|demo|bench)\//.test(path)), 'no sources, tests, demo or bench')

  const prefix = join(dir, 'global')
  const installed = spawnSync('npm', ['install', '--global', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', join(dir, filename)],
    { cwd: cleanDirectory(), encoding: 'utf8', env: userEnv, timeout: 120_000 })
  t.equal(installed.status, 0, installed.stderr)
  const bin = join(prefix, 'bin', 'bearer-proxy')
  t.equal(spawnSync(bin, ['--version'], { encoding: 'utf8', cwd: cleanDirectory(), env: userEnv }).stdout.trim(), pkg.version)
  const noConfig = spawnSync(bin, ['serve'], { encoding: 'utf8', cwd: cleanDirectory(), env: userEnv })
  t.equal(noConfig.status, 2)
  t.match(noConfig.stderr, /no configuration found/)
  // The examples it names are where it says, in the installed package.
  const [, examples = '', names = ''] = /Examples to copy[^:]*: (\S+)\{([^}]+)\}\.env/.exec(noConfig.stderr) ?? []
  t.ok(examples.startsWith(prefix), `${examples} is in the installed package`)
  for (const name of names.split(',')) t.ok(existsSync(join(examples, `${name}.env`)), `${name}.env is there`)
})

t.test('the README never sends users to `npx bearer-proxy`, which outside a clone fetches whatever package has that name', async (t) => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  t.notMatch(readme, /npx bearer-proxy/)
  t.match(readme, /npm install -g \.\/bearer-proxy-/)
})

t.test('the README lists every error the proxy answers, with its status', async (t) => {
  const { PROXY_ERRORS } = await import('../src/errors.js')
  const readme = readFileSync(join(root, 'README.md'), 'utf8').replace(/\s+/g, ' ')
  for (const [code, status] of Object.entries(PROXY_ERRORS)) t.ok(readme.includes(`${status} \`${code}\``), `${status} ${code}`)
})

t.test('the packages the bundle substitutes are pinned to exact versions: a substitute names their files', async (t) => {
  const bundle = readFileSync(join(root, 'scripts', 'bundle.mjs'), 'utf8')
  const substituted = [...(/const SUBSTITUTES = \{([\s\S]*?)\n\}/.exec(bundle)?.[1] ?? '').matchAll(/^ {2}'?([\w-]+)'?: \{/gm)].map((match) => match[1] as string)
  t.same(substituted.sort(), ['ajv', 'prom-client', 'undici'])
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string>, devDependencies: Record<string, string> }
  for (const name of substituted) t.match({ [name]: manifest.dependencies[name] ?? manifest.devDependencies[name] }, { [name]: /^\d+\.\d+\.\d+$/ }, `${name} pinned`)
})
