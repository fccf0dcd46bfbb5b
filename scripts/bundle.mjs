// dist/cli.js: src/ and its dependencies in one ES module, made by esbuild.
//
// Why one file: node spends most of a start resolving, reading and compiling ~400
// modules (fastify, undici, pino, ajv and theirs); the figures are in the README's
// "Benchmark". esbuild because it
// reads the TypeScript as it is, bundles in well under a second, and keeps the
// lazy `await import()` of each command lazy (evaluated on first use) inside the file.
//
// yaml (--config) and pino-pretty (LOG_FORMAT=pretty) stay outside: they are loaded
// only when asked for, from node_modules.
//
// dist/otel.js: the tracer (src/otel.ts with the OpenTelemetry SDK and its OTLP
// exporters), a bundle of its own that dist/cli.js imports only when the OTEL_*
// variables ask for traces: without them, not a byte of it is read. The
// OpenTelemetry packages are therefore build-time dependencies (devDependencies):
// the image's node_modules does not carry them.
import { chmodSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

// Packages whose index loads much that bearer-proxy never uses: the bundle gets the
// parts it uses instead (each file says what it leaves out and why).
// Their packages are pinned to exact versions (package.json), since a substitute names their files.
const SUBSTITUTES = {
  undici: { file: 'undici-dispatchers.cjs' }, // ours and reply-from's: the dispatchers, not fetch and the web half
  'prom-client': { file: 'prom-client-core.cjs' }, // the registry and metric types, not the Pushgateway and cluster aggregator
  // env-schema's only: Ajv, without compiling the meta-schema at each start (Fastify's own Ajv is the package's).
  ajv: { file: 'ajv-prechecked.cjs', only: '/node_modules/env-schema/' }
}
const substitutes = {
  name: 'substitutes',
  setup (build) {
    build.onResolve({ filter: new RegExp(`^(${Object.keys(SUBSTITUTES).join('|')})$`) }, ({ path, importer }) => {
      const { file, only } = SUBSTITUTES[path]
      if (only !== undefined && !importer.includes(only)) return undefined
      return { path: fileURLToPath(new URL(file, import.meta.url)) }
    })
  }
}

/** The tracer's import stays an import, of the file beside dist/cli.js. */
const tracerApart = {
  name: 'tracer-apart',
  setup (build) {
    build.onResolve({ filter: /^\.\/otel\.js$/ }, ({ path }) => ({ path, external: true }))
  }
}

const COMMON = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // Dependencies written as CommonJS call require(): given one, as node gives each CommonJS module its own.
  banner: { js: "import { createRequire as __bundleRequire } from 'node:module'; const require = __bundleRequire(import.meta.url);" },
  minifySyntax: true,
  minifyWhitespace: true,
  legalComments: 'none',
  logLevel: 'warning'
}

rmSync('dist', { recursive: true, force: true })
const result = await build({
  ...COMMON,
  entryPoints: ['src/cli.ts'],
  outfile: 'dist/cli.js',
  external: ['yaml', 'pino-pretty'],
  plugins: [substitutes, tracerApart],
  metafile: true
})
chmodSync('dist/cli.js', 0o755)
await build({ ...COMMON, entryPoints: ['src/otel.ts'], outfile: 'dist/otel.js' })
checkSubstitutes(result.metafile)

/**
 * Every name that a bundled file takes from a substituted package (src/'s imports,
 * a dependency's `require('undici').Pool` or destructuring) must be one its substitute
 * exports: otherwise type checks and in-process tests, which use the real package,
 * pass, and the name is undefined in dist/. The build fails, naming them.
 */
function checkSubstitutes (metafile) {
  const require = createRequire(import.meta.url)
  const missing = []
  for (const [input, { imports }] of Object.entries(metafile.inputs)) {
    for (const { original } of imports) {
      const substitute = SUBSTITUTES[original]
      if (substitute === undefined || (substitute.only !== undefined && !input.includes(substitute.only))) continue
      const exported = require(fileURLToPath(new URL(substitute.file, import.meta.url)))
      for (const name of namesTaken(readFileSync(input, 'utf8'), original)) {
        if (exported[name] === undefined) missing.push(`${input} takes ${name} from ${original}, which ${substitute.file} lacks`)
      }
    }
  }
  if (missing.length > 0) {
    process.stderr.write(`the bundle's substitutes lack names that are used:\n  ${missing.join('\n  ')}\n`)
    process.exit(1)
  }
}

/** The names `text` takes from `pkg`: `import { a, b as c }`, `const { a } = require(…)`, `const x = require(…)` then `x.a`. */
function namesTaken (text, pkg) {
  const quoted = `['"]${pkg.replace(/[-/]/g, '\\$&')}['"]`
  const names = new Set()
  const split = (list) => list.split(',').map((part) => part.trim().split(/\s+as\s+|\s*:\s*/)[0]).filter((name) => name !== '' && !name.startsWith('type '))
  for (const [, list] of text.matchAll(new RegExp(`import\\s*\\{([^}]*)\\}\\s*from\\s*${quoted}`, 'g'))) for (const name of split(list)) names.add(name)
  for (const [, list] of text.matchAll(new RegExp(`\\{([^}]*)\\}\\s*=\\s*require\\(${quoted}\\)`, 'g'))) for (const name of split(list)) names.add(name)
  for (const [, variable] of text.matchAll(new RegExp(`(\\w+)\\s*=\\s*require\\(${quoted}\\)(?![.\\w])`, 'g'))) {
    for (const [, name] of text.matchAll(new RegExp(`\\b${variable}\\.(\\w+)`, 'g'))) names.add(name)
  }
  return names
}
