// dist/cli.js: src/ and its dependencies in one ES module, made by esbuild.
//
// Why one file: node spends most of a start resolving, reading and compiling ~400
// modules (fastify, undici, pino, ajv and theirs); one file cuts `serve`'s spawn to
// /-/ready by ~40% and its idle RSS by ~7 MiB (npm run bench). esbuild because it
// reads the TypeScript as it is, bundles in well under a second, and keeps the
// lazy `await import()` of each command lazy (evaluated on first use) inside the file.
//
// yaml (--config) and pino-pretty (LOG_FORMAT=pretty) stay outside: they are loaded
// only when asked for, from node_modules.
import { chmodSync, rmSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

// Packages whose index loads much that bearer-proxy never uses: the bundle gets the
// parts it uses instead (each file says what it leaves out and why).
const SUBSTITUTES = {
  undici: 'undici-dispatchers.cjs', // ours and reply-from's: the dispatchers, not fetch and the web half
  'prom-client': 'prom-client-core.cjs', // the registry and metric types, not the Pushgateway and cluster aggregator
  ajv: 'ajv-prechecked.cjs' // env-schema's: Ajv, without compiling the meta-schema at each start
}
const substitutes = {
  name: 'substitutes',
  setup (build) {
    build.onResolve({ filter: new RegExp(`^(${Object.keys(SUBSTITUTES).join('|')})$`) }, ({ path }) => ({ path: fileURLToPath(new URL(SUBSTITUTES[path], import.meta.url)) }))
  }
}

rmSync('dist', { recursive: true, force: true })
await build({
  entryPoints: ['src/cli.ts'],
  outfile: 'dist/cli.js',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['yaml', 'pino-pretty'],
  // Dependencies written as CommonJS call require(): given one, as node gives each CommonJS module its own.
  banner: { js: "import { createRequire as __bundleRequire } from 'node:module'; const require = __bundleRequire(import.meta.url);" },
  minifySyntax: true,
  minifyWhitespace: true,
  legalComments: 'none',
  logLevel: 'warning',
  plugins: [substitutes]
})
chmodSync('dist/cli.js', 0o755)
