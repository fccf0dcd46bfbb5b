import { execFileSync, spawnSync } from 'node:child_process'
import { builtinModules, createRequire } from 'node:module'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

// npm ci and tsc in a fresh directory: on a loaded machine longer than the suite's 120 s per file.
t.setTimeout(480_000)

/** Named in the bundle but never needed: ws tries bufferutil and goes on without it; ajv's are text of code it generates. */
const OPTIONAL = new Set(['bufferutil', 'utf-8-validate', 'ajv-formats/dist/formats'])

const root = fileURLToPath(new URL('../..', import.meta.url))
const dockerfile = readFileSync(join(root, 'Dockerfile'), 'utf8')
const stages = dockerfile.split(/^FROM /m).slice(1)

t.test('the image: a supported LTS Node (22 or 24), slim, multi-stage, non-root, health check, 0.0.0.0 only with an inbound key', async (t) => {
  t.equal(stages.length, 2)
  const lines = stages.map((stage) => /^node:(\d+)-slim/.exec(stage)?.[1])
  t.ok(lines.every((line) => line === '22' || line === '24'), `a supported LTS line, slim: ${lines.join(', ')}`)
  t.equal(new Set(lines).size, 1, 'built and run on the same Node')
  t.match(dockerfile, /chosen by measurement/, 'the Dockerfile says why that Node')
  const run = stages[1] as string
  t.match(run, /^USER 1000:1000$/m, 'the node user, by number')
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
  // What ships is the product, in one file, and the tracer it loads only when traces are asked for:
  // whatever they still load at run time (yaml, pino-pretty) the image installs.
  t.same(readdirSync(join(dir, 'dist')).sort(), ['cli.js', 'otel.js'], 'dist is the one-file bundle and the tracer')
  const bundle = readFileSync(join(dir, 'dist/cli.js'), 'utf8') + readFileSync(join(dir, 'dist/otel.js'), 'utf8')
  const loaded = new Set<string>()
  // require("x"), import("x"), and createRequire(import.meta.url)("x"), as esbuild writes them; the tracer by its own path.
  t.match(bundle, /import\("\.\/otel\.js"\)/, 'the tracer is imported from beside the bundle')
  for (const [, specifier = ''] of bundle.matchAll(/(?:\brequire\(|\bimport\(|import\.meta\.url\)\()"((?:@[\w.-]+\/)?[\w.-]+(?:\/[\w./-]+)?)"\)/g)) {
    if (!specifier.startsWith('node:') && !builtinModules.includes(specifier)) loaded.add(specifier)
  }
  t.ok(loaded.has('yaml') && loaded.has('pino-pretty'), `loaded at run time: ${[...loaded].join(', ')}`)
  const fromImage = createRequire(join(dir, 'dist/cli.js'))
  const missing = [...loaded].filter((specifier) => {
    if (OPTIONAL.has(specifier)) return false
    try {
      fromImage.resolve(specifier)
      return false
    } catch {
      return true
    }
  })
  t.same(missing, [], 'each resolves from the image\'s node_modules')
  // The tracer loads on the production dependencies alone: its OpenTelemetry packages are in it, not in node_modules.
  const tracer = spawnSync(process.execPath, ['--input-type=module', '-e', 'const { createTracing } = await import("./dist/otel.js"); process.stdout.write(typeof createTracing)'], { cwd: dir, encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } })
  t.equal(tracer.stdout, 'function', tracer.stderr)
  t.notOk(existsSync(join(dir, 'node_modules/@opentelemetry/sdk-trace')), 'the OpenTelemetry SDK pruned with the dev dependencies')
  t.notOk(existsSync(join(dir, 'dist/demo.js')) || existsSync(join(dir, 'dist/demo')), 'no demo in dist')
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
  const health = spawnSync('env', ['-u', 'NODE_OPTIONS', name, 'health', '--port', '1'], { encoding: 'utf8', cwd: dir, env })
  t.equal(health.status, 1, 'runs far enough to try the proxy it checks')
  t.match(health.stderr, /health: http:\/\/127\.0\.0\.1:1\/-\/ready failed: ECONNREFUSED/)
})
