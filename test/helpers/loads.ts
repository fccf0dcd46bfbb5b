import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/**
 * A module hook that records every file node loads, for tests of what a command
 * reads: `register` is given to `node --import`, `loaded()` names the files since
 * the last `reset()` (dist/ files as `dist/…`), the hook's own left out.
 */
export function moduleRecorder (): { readonly register: string, readonly reset: () => void, readonly loaded: () => string[] } {
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-loads-'))
  const record = join(dir, 'loaded.txt')
  writeFileSync(join(dir, 'hooks.mjs'), `import { appendFileSync } from 'node:fs'
export async function load (url, context, next) {
  if (url.startsWith('file:')) appendFileSync(${JSON.stringify(record)}, url + '\\n')
  return next(url, context)
}
`)
  writeFileSync(join(dir, 'register.mjs'), 'import { register } from \'node:module\'\nregister(\'./hooks.mjs\', import.meta.url)\n')
  return {
    register: join(dir, 'register.mjs'),
    reset: () => writeFileSync(record, ''),
    loaded: () => readFileSync(record, 'utf8').split('\n')
      .filter((url) => url !== '' && !url.includes('bearer-proxy-loads-'))
      .map((url) => url.replace(/^.*\/dist\//, 'dist/'))
  }
}
