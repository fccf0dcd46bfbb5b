import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadConfig } from '../src/config.js'
import { readLogin, saveLogin } from '../src/login-store.js'
import { writePrivateFile } from '../src/private-file.js'
import { Secret } from '../src/secret.js'
import { afterFetch, baseEnv, runCli, startApiOf, startIdentity, startTestProxy } from './helpers/stack.js'
import { prepareTokenFile } from '../src/token/file.js'

/**
 * The login store and TOKEN_FILE stay their owner's: loose modes tightened (or
 * refused when the directory is another user's), the mode set on the descriptor
 * before the rename, a file that is not a store reported without quoting it.
 */

const ISSUER = 'https://idp.example/realms/demo'
const REFRESH = 'rt-Private-Store-Value-4417'
/** A user id that is not this process's (the suite runs as root in CI; as another user the chown cases are not possible). */
const OTHER = 12_345
const root = process.getuid?.() === 0
const fresh = (): string => mkdtempSync(join(tmpdir(), 'bearer-proxy-private-'))
const modeOf = (path: string): number => statSync(path).mode & 0o7777

t.test('the store: a directory or file that others could read or write is tightened; the mode is set before the rename, whatever the umask', async (t) => {
  const dir = join(fresh(), 'bearer-proxy')
  mkdirSync(dir, { mode: 0o777 })
  chmodSync(dir, 0o777)
  const store = join(dir, 'logins.json')
  const umask = process.umask(0)
  try {
    saveLogin(store, ISSUER, 'cli', new Secret(REFRESH))
  } finally {
    process.umask(umask)
  }
  t.equal(modeOf(dir), 0o700, 'its directory tightened to 0700')
  t.equal(modeOf(store), 0o600, 'the store is 0600 under umask 000')
  chmodSync(store, 0o644)
  chmodSync(dir, 0o755)
  t.equal(readLogin(store, ISSUER, 'cli')?.reveal(), REFRESH)
  t.same([modeOf(dir), modeOf(store)], [0o700, 0o600], 'reading tightens them too')
})

t.test('writing a private file never follows a link planted at its name, and leaves nothing behind', async (t) => {
  const dir = fresh()
  const victim = join(dir, 'victim')
  writeFileSync(victim, 'untouched', { mode: 0o644 })
  const path = join(dir, 'token')
  symlinkSync(victim, path)
  writePrivateFile(path, 'secret-Token-Value')
  t.equal(readFileSync(victim, 'utf8'), 'untouched', 'the link\'s target is not written')
  t.equal(modeOf(victim), 0o644, 'nor is its mode changed')
  t.ok(lstatSync(path).isFile(), 'the link is replaced by the file')
  t.equal(modeOf(path), 0o600)
  t.equal(readFileSync(path, 'utf8'), 'secret-Token-Value')
  const { readdirSync } = await import('node:fs')
  t.same(readdirSync(dir).sort(), ['token', 'victim'], 'no temporary file left')
})

t.test('a store that is not one, or is another user\'s, is reported by its path, never quoted', { skip: !root && 'needs root to give a file to another user' }, async (t) => {
  const dir = join(fresh(), 'bearer-proxy')
  mkdirSync(dir, { mode: 0o700 })
  const store = join(dir, 'logins.json')
  const idp = await startIdentity(t)
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_GRANT: 'login', BEARER_PROXY_TOKEN_STORE: store }
  for (const [content, why] of [
    ['not-json Stored-Secret-Text-91 {', /the login store \S+logins\.json is not JSON: move it away or choose another BEARER_PROXY_TOKEN_STORE/],
    ['{"refresh_token":"Stored-Secret-Text-91"}', /the login store \S+logins\.json is not a login store of bearer-proxy/],
    ['["Stored-Secret-Text-91"]', /is not a login store of bearer-proxy/]
  ] as const) {
    writeFileSync(store, content, { mode: 0o600 })
    t.throws(() => readLogin(store, ISSUER, 'cli'), why)
    const result = await runCli(['token'], env)
    t.not(result.code, 0)
    t.match(result.stderr, why, 'bearer-proxy token says what is wrong with the store')
    t.notMatch(result.stderr, /Stored-Secret-Text-91/, 'and quotes none of it')
  }
  writeFileSync(store, JSON.stringify({ version: 1, logins: {} }), { mode: 0o600 })
  chownSync(store, OTHER, OTHER)
  t.throws(() => readLogin(store, ISSUER, 'cli'), /the login store \S+logins\.json belongs to another user: it is not read/)
  chownSync(store, 0, 0)
  chownSync(dir, OTHER, OTHER)
  chmodSync(dir, 0o777)
  t.throws(() => saveLogin(store, ISSUER, 'cli', new Secret(REFRESH)), /its directory \S+ belongs to another user and others can use it/)
  t.equal(modeOf(dir), 0o777, 'another user\'s directory is not changed')
})

t.test('TOKEN_FILE: a directory that other users can write is refused at start (exit 2); one with the sticky bit, as /tmp, is accepted', async (t) => {
  const base = { BEARER_PROXY_TOKEN_URL: 'http://127.0.0.1:1/token', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_UPSTREAM: 'http://127.0.0.1:1', BEARER_PROXY_PORT: '0' }
  const open = join(fresh(), 'shared')
  mkdirSync(open)
  chmodSync(open, 0o777)
  const refused = await runCli(['serve'], { ...base, BEARER_PROXY_TOKEN_FILE: join(open, 'token') })
  t.equal(refused.code, 2)
  t.match(refused.stderr, /BEARER_PROXY_TOKEN_FILE: the directory of \S+shared\/token can be written by other users \(mode 777\); use a directory only this user can write/)
  const problems = (file: string): string => {
    try {
      loadConfig({ env: { ...base, BEARER_PROXY_TOKEN_FILE: file }, envFile: '/dev/null', forwarding: true })
      return ''
    } catch (error) {
      return (error as Error).message
    }
  }
  chmodSync(open, 0o775)
  t.match(problems(join(open, 'token')), /can be written by other users \(mode 775\)/, 'the group too')
  if (root) {
    chmodSync(open, 0o755)
    chownSync(open, OTHER, OTHER)
    t.match(problems(join(open, 'token')), /the directory of \S+ belongs to another user/)
    chownSync(open, 0, 0)
  }
  // Sticky: no one else can remove or replace the proxy's file there.
  chmodSync(open, 0o1777)
  t.equal(problems(join(open, 'token')), '', 'a sticky directory is accepted')
  chmodSync(open, 0o700)
  t.equal(problems(join(open, 'token')), '', 'a private one too')
})

t.test('TOKEN_FILE in a directory that does not exist yet, under a shared volume\'s root that everyone can write: serve makes it, 0700, and writes the token there', async (t) => {
  const volume = join(fresh(), 'volume')
  mkdirSync(volume)
  chmodSync(volume, 0o777)
  const file = join(volume, 'bearer-proxy', 'token')
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const { proxy } = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_TOKEN_FILE: file })
  // The file is written by the first listener of the fetch that brought the token.
  await afterFetch(proxy.tokens, () => proxy.tokens.current() !== undefined)
  t.ok(existsSync(file))
  t.equal(modeOf(join(volume, 'bearer-proxy')), 0o700, 'the directory is the proxy\'s own')
  t.equal(modeOf(file), 0o600)
  t.equal(readFileSync(file, 'utf8'), proxy.tokens.current()?.reveal())

  // Made by someone else between the check and the start, open to all: the start is refused.
  const raced = join(volume, 'raced')
  mkdirSync(raced)
  chmodSync(raced, 0o777)
  t.throws(() => prepareTokenFile(join(raced, 'token')), /BEARER_PROXY_TOKEN_FILE: the directory of \S+raced\/token can be written by other users \(mode 777\)/)
})
