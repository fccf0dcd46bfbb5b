import { execFileSync, spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

const root = fileURLToPath(new URL('..', import.meta.url))
const dockerfile = readFileSync(join(root, 'Dockerfile'), 'utf8')
const stages = dockerfile.split(/^FROM /m).slice(1)

t.test('the image: Node 24 slim, multi-stage, non-root, health check, 0.0.0.0 only with an inbound key', async (t) => {
  t.equal(stages.length, 2)
  for (const stage of stages) t.match(stage, /^node:24-slim/)
  const run = stages[1] as string
  t.match(run, /^USER node$/m)
  t.match(run, /^HEALTHCHECK .*\["bearer-proxy", "health"\]/m)
  t.match(run, /BEARER_PROXY_HOST=0\.0\.0\.0/)
  t.match(run, /COPY --from=build \/app\/node_modules/)
  t.notMatch(run, /COPY src/, 'no sources in the runtime image')
})

t.test('the build stage\'s steps, run in a temporary directory, give a dist/cli.js that runs on production dependencies only', async (t) => {
  const build = stages[0] as string
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-image-'))
  for (const [, sources] of build.matchAll(/^COPY (.+) \S+$/gm)) {
    for (const source of (sources as string).split(/\s+/)) cpSync(join(root, source), join(dir, source), { recursive: true })
  }
  const steps = [...build.matchAll(/^RUN (.+)$/gm)].map((match) => match[1] as string)
  t.ok(steps.length > 0)
  for (const step of steps) {
    // --prefer-offline: the packages this checkout's own `npm ci` just fetched.
    const command = step.replace('npm ci', 'npm ci --prefer-offline')
    const result = spawnSync('sh', ['-c', command], { cwd: dir, encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' }, timeout: 240_000 })
    t.equal(result.status, 0, `${command}\n${result.stderr.slice(-2000)}`)
  }
  t.ok(existsSync(join(dir, 'dist/cli.js')), 'built')
  for (const dev of ['typescript', 'tap', 'oidc-provider']) t.notOk(existsSync(join(dir, 'node_modules', dev)), `${dev} pruned`)
  // The runtime stage links the bin onto PATH and runs it as ENTRYPOINT and HEALTHCHECK:
  // by its own shebang, so dist/cli.js must be executable.
  const link = /^RUN ln -s \/app\/(\S+) \/usr\/local\/bin\/(\S+)$/m.exec(stages[1] as string)
  t.ok(link, 'the runtime stage puts the bin on PATH')
  const [, target = '', name = ''] = link ?? []
  mkdirSync(join(dir, 'bin'))
  symlinkSync(join(dir, target), join(dir, 'bin', name))
  const env = { ...process.env, PATH: `${join(dir, 'bin')}:${process.env.PATH ?? ''}` }
  const version = execFileSync('env', ['-u', 'NODE_OPTIONS', name, '--version'], { encoding: 'utf8', env })
  t.equal(version.trim(), (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version)
  const noConfig = spawnSync('env', ['-u', 'NODE_OPTIONS', name, 'health'], { encoding: 'utf8', cwd: dir, env })
  t.equal(noConfig.status, 2, 'runs far enough to read its configuration')
})
