import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Ajv } from 'ajv'
import t from 'tap'
import { ConfigError, loadConfig } from '../src/config.js'
import { SCHEMA } from '../src/config/settings.js'
import { runCli } from './helpers/stack.js'

const minimal = {
  BEARER_PROXY_TOKEN_URL: 'https://idp.example/token',
  BEARER_PROXY_CLIENT_ID: 'client',
  BEARER_PROXY_CLIENT_SECRET: 'Sup3r-Secret-Value',
  BEARER_PROXY_UPSTREAM: 'https://api.example/base'
}

function problems (env: Record<string, string>, options: { forwarding?: boolean } = {}): readonly string[] {
  try {
    loadConfig({ env, envFile: '/dev/null', ...options })
  } catch (error) {
    if (error instanceof ConfigError) return error.problems
    throw error
  }
  return []
}

t.test('defaults', async (t) => {
  const config = loadConfig({ env: minimal, envFile: '/dev/null' })
  t.match(config, {
    host: '127.0.0.1', port: 8080, readOnly: false, timeout: 30, checkPath: '/',
    tokenSettings: { flavour: 'oidc', credentials: { grant: 'client_credentials', client: { id: 'client' } }, clientAuth: 'client_secret_post', refreshSkew: 30 }
  })
  t.equal(config.upstream?.href, 'https://api.example/base')
  t.equal(config.logLevel, undefined, 'each command has its own default level')
  t.equal(config.logFormat, undefined, 'pretty on a terminal, else JSON')
  t.equal(JSON.stringify(config).includes('Sup3r-Secret-Value'), false, 'the secret cannot be serialised')
})

t.test('the settings schema is a valid JSON Schema: the bundle\'s Ajv does not check it at each start (scripts/ajv-prechecked.cjs)', async (t) => {
  const ajv = new Ajv({ strict: true, allowUnionTypes: true })
  t.ok(ajv.validateSchema(SCHEMA), ajv.errorsText(ajv.errors))
  const broken = { ...SCHEMA, properties: { ...SCHEMA.properties, BEARER_PROXY_PORT: { type: 'integr' } } }
  t.notOk(ajv.validateSchema(broken), 'a misspelt type is caught')
})

t.test('every bad value is reported, one line each, naming the variable and never a secret', async (t) => {
  const lines = problems({
    ...minimal,
    BEARER_PROXY_AUTH: 'kerberos',
    BEARER_PROXY_PORT: 'eighty',
    BEARER_PROXY_TIMEOUT: '-1',
    BEARER_PROXY_REFRESH_SKEW: 'soon',
    BEARER_PROXY_READ_ONLY: 'perhaps',
    BEARER_PROXY_LOG_LEVEL: 'loud',
    BEARER_PROXY_CLIENT_AUTH: 'mtls',
    BEARER_PROXY_CLIENTSECRET: 'typo'
  })
  t.equal(lines.length, 8, lines.join('\n'))
  for (const name of ['AUTH', 'PORT', 'TIMEOUT', 'REFRESH_SKEW', 'READ_ONLY', 'LOG_LEVEL', 'CLIENT_AUTH', 'CLIENTSECRET']) {
    t.ok(lines.some((line) => line.startsWith(`BEARER_PROXY_${name}:`)), name)
  }
  t.match(lines.find((line) => line.startsWith('BEARER_PROXY_AUTH')), /oidc, runai, runai-apptoken, apiconnect/)
  t.notMatch(lines.join('\n'), /Sup3r-Secret-Value/)
})

t.test('missing and conflicting settings', async (t) => {
  t.match(problems({ BEARER_PROXY_CLIENT_ID: 'x', BEARER_PROXY_CLIENT_SECRET: 'y', BEARER_PROXY_TOKEN_URL: 'http://i/t' }),
    [/BEARER_PROXY_UPSTREAM: required/])
  t.same(problems({ BEARER_PROXY_CLIENT_ID: 'x', BEARER_PROXY_CLIENT_SECRET: 'y', BEARER_PROXY_TOKEN_URL: 'http://i/t' }, { forwarding: false }), [],
    'check and token need no upstream')
  t.match(problems({ ...minimal, BEARER_PROXY_CLIENT_SECRET: '' }), [/BEARER_PROXY_CLIENT_SECRET: required/])
  t.match(problems({ ...minimal, BEARER_PROXY_GRANT: 'password' }), [/USERNAME: required/, /PASSWORD: required/])
  t.match(problems({ ...minimal, BEARER_PROXY_GRANT: 'refresh_token' }), [/REFRESH_TOKEN: required/])
  t.match(problems({ ...minimal, BEARER_PROXY_GRANT: 'api_key' }), [/GRANT: api_key is not a grant of AUTH=oidc/])
  t.match(problems({ ...minimal, BEARER_PROXY_TOKEN_URL: '' }), [/TOKEN_URL: required for AUTH=oidc/])
  t.match(problems({ ...minimal, BEARER_PROXY_TOKEN_URL: 'ftp://x/y' }), [/TOKEN_URL: must be an http/])
  t.match(problems({ ...minimal, BEARER_PROXY_UPSTREAM: 'not a url' }), [/UPSTREAM: not a URL/])
  t.match(problems({ ...minimal, BEARER_PROXY_UPSTREAM: 'https://user:pw@api.example' }), [/must not carry a user name or password/])
  t.match(problems({ ...minimal, BEARER_PROXY_CLUSTERS: 'a=http://x,a=http://y,=http://z' }), [/listed twice/, /expected name=url/])
  t.match(problems({ ...minimal, BEARER_PROXY_CLUSTERS: 'gpu-a=http://x,GPU-A=http://y' }), [/cluster GPU-A is listed twice \(names are compared without case\)/], 'one cluster per name, whatever its case')
  t.match(problems({ ...minimal, BEARER_PROXY_CLIENT_SECRET_FILE: '/nonexistent/secret' }), [/set one of them, not both/])
  t.match(problems({ ...minimal, BEARER_PROXY_CLIENT_SECRET: '', BEARER_PROXY_CLIENT_SECRET_FILE: '/nonexistent/secret' }),
    [/CLIENT_SECRET_FILE: cannot read \/nonexistent\/secret \(ENOENT\)/])
  t.match(problems({ ...minimal, BEARER_PROXY_HOST: '0.0.0.0' }), [/HOST: 0.0.0.0 is not a loopback address.*INBOUND_KEY.*ALLOW_ANONYMOUS/])
  t.same(problems({ ...minimal, BEARER_PROXY_HOST: '0.0.0.0', BEARER_PROXY_ALLOW_ANONYMOUS: 'true' }), [])
  t.same(problems({ ...minimal, BEARER_PROXY_HOST: '::1' }), [])
  t.same(problems({ ...minimal, BEARER_PROXY_REFRESH_SKEW: '0' }), [], 'REFRESH_SKEW accepts 0')
})

t.test('one table says what each flavour and grant needs; the first-setup message names those settings', async (t) => {
  const { NEEDS } = await import('../src/config/settings.js')
  const { generateKeyPairSync } = await import('node:crypto')
  const keyFile = join(mkdtempSync(join(tmpdir(), 'bearer-proxy-key-')), 'client.pem')
  writeFileSync(keyFile, generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }))
  const values: Record<string, string> = {
    CLIENT_ID: 'id', CLIENT_SECRET: 'secret-1', USERNAME: 'u', PASSWORD: 'secret-2', REFRESH_TOKEN: 'secret-3', API_KEY: 'secret-4', CLIENT_KEY_FILE: keyFile, SUBJECT_TOKEN_FILE: keyFile
  }
  for (const [flavour, grants] of Object.entries(NEEDS)) {
    for (const [grant, needed] of Object.entries(grants)) {
      // A login is kept per issuer: its endpoint is discovered.
      const where: Record<string, string> = grant !== 'login'
        ? { BEARER_PROXY_TOKEN_URL: 'https://idp.example/t' }
        : flavour === 'runai' ? { BEARER_PROXY_REALM: 'tenant' } : { BEARER_PROXY_ISSUER: 'https://idp.example' }
      const env: Record<string, string> = { BEARER_PROXY_AUTH: flavour, BEARER_PROXY_GRANT: grant, BEARER_PROXY_UPSTREAM: 'https://api.example', ...where }
      for (const name of needed) env[`BEARER_PROXY_${name}`] = values[name] as string
      t.same(problems(env), [], `${flavour} ${grant} with ${needed.join(', ')}`)
      for (const name of needed) {
        const without = { ...env }
        delete without[`BEARER_PROXY_${name}`]
        t.match(problems(without), [new RegExp(`^BEARER_PROXY_${name}: required.*AUTH=${flavour} GRANT=${grant}`)], `${flavour} ${grant} without ${name}`)
      }
    }
  }
  t.same(problems({ ...minimal, BEARER_PROXY_CLIENT_SECRET_FILE: '/nonexistent/secret' }).length, 1, 'a secret set twice is one line, at its cause')
  t.match(problems({ BEARER_PROXY_GRANT: 'login', BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_URL: 'https://idp.example/t', BEARER_PROXY_UPSTREAM: 'https://api.example' }),
    [/^BEARER_PROXY_GRANT: login needs BEARER_PROXY_ISSUER \(or BEARER_PROXY_REALM with BEARER_PROXY_UPSTREAM\) rather than BEARER_PROXY_TOKEN_URL/])
  // Run:ai's own sign-in is at its realm: without one there is nowhere to log in; its code is exchanged by /api/v1/token alone.
  const runaiLogin = { BEARER_PROXY_AUTH: 'runai', BEARER_PROXY_GRANT: 'login', BEARER_PROXY_CLIENT_ID: 'runai-cli', BEARER_PROXY_UPSTREAM: 'https://runai.example' }
  t.match(problems(runaiLogin), [/^BEARER_PROXY_REALM: required for AUTH=runai GRANT=login \(the realm of Run:ai's sign-in/])
  t.match(problems({ ...runaiLogin, BEARER_PROXY_REALM: 'tenant', BEARER_PROXY_RUNAI_TOKEN_API: 'v2' }), [/^BEARER_PROXY_RUNAI_TOKEN_API: does nothing with AUTH=runai GRANT=login/])
  const config = loadConfig({ env: { ...runaiLogin, BEARER_PROXY_REALM: 'tenant' }, envFile: '/dev/null' })
  t.match(config.tokenSettings.credentials, { grant: 'login', login: { issuer: 'https://runai.example/auth/realms/tenant' } }, 'the login is kept under the realm')
  t.match(config.tokenSettings.endpoint, { kind: 'url', endpoint: { url: new URL('https://runai.example/api/v1/token'), dialect: 'runai-v1' } }, 'and renewed by the token API')
  const first = await runCli(['check'], {}, { cwd: mkdtempSync(join(tmpdir(), 'bearer-proxy-empty-')) })
  t.equal(first.code, 2)
  t.match(first.stderr, /BEARER_PROXY_UPSTREAM.*BEARER_PROXY_TOKEN_URL or BEARER_PROXY_ISSUER.*BEARER_PROXY_CLIENT_ID, BEARER_PROXY_CLIENT_SECRET/)
  t.match(first.stderr, /GRANT=password needs BEARER_PROXY_CLIENT_ID, BEARER_PROXY_USERNAME, BEARER_PROXY_PASSWORD/)
})

t.test('a problem is reported once, at its cause; settings the chosen flavour or grant ignores are reported', async (t) => {
  t.same(problems({ BEARER_PROXY_AUTH: 'runia', BEARER_PROXY_UPSTREAM: 'https://runai.example', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's' }).length, 1,
    'a misspelt AUTH is not followed by what oidc would need')
  t.match(problems({ BEARER_PROXY_AUTH: 'runia', BEARER_PROXY_UPSTREAM: 'https://runai.example' }), [/^BEARER_PROXY_AUTH: must be equal to one of the allowed values: oidc, runai/])
  t.same(problems({ ...minimal, BEARER_PROXY_GRANT: 'pasword' }).length, 1, 'a misspelt GRANT too')
  const runai = { BEARER_PROXY_AUTH: 'runai', BEARER_PROXY_UPSTREAM: 'https://runai.example', BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's' }
  t.match(problems({ ...runai, BEARER_PROXY_REALM: 'runai' }), [/^BEARER_PROXY_REALM: does nothing with AUTH=runai GRANT=client_credentials \(only AUTH=oidc \(Keycloak\), apiconnect, or runai with GRANT=login reads it\); remove it$/])
  t.match(problems({ ...runai, BEARER_PROXY_SCOPE: 'openid' }), [/^BEARER_PROXY_SCOPE: does nothing with AUTH=runai/])
  t.match(problems({ ...minimal, BEARER_PROXY_USERNAME: 'u' }), [/^BEARER_PROXY_USERNAME: does nothing with AUTH=oidc GRANT=client_credentials \(only GRANT=password reads it\)/])
  t.match(problems({ ...minimal, BEARER_PROXY_API_KEY_FILE: '/dev/null' }), [/^BEARER_PROXY_API_KEY: does nothing/])
  t.match(problems({ ...minimal, BEARER_PROXY_ISSUER: 'https://kc.example/realms/a' }), [/^BEARER_PROXY_ISSUER: does nothing when BEARER_PROXY_TOKEN_URL is set/])
  t.same(problems({ ...minimal, BEARER_PROXY_SCOPE: 'openid', BEARER_PROXY_AUDIENCE: 'api' }), [], 'what oidc reads is fine')
})

t.test('derived token endpoints', async (t) => {
  const base = { BEARER_PROXY_CLIENT_ID: 'c', BEARER_PROXY_CLIENT_SECRET: 's', BEARER_PROXY_UPSTREAM: 'https://runai.example/' }
  const endpoint = (env: Record<string, string>): unknown => loadConfig({ env: { ...base, ...env }, envFile: '/dev/null' }).tokenSettings.endpoint
  t.match(endpoint({ BEARER_PROXY_REALM: 'runai' }), { kind: 'issuer', issuers: [{ href: 'https://runai.example/realms/runai' }, { href: 'https://runai.example/auth/realms/runai' }] },
    'Keycloak 17+ first, then older Keycloak (and Run:ai\'s bundled one)')
  t.match(endpoint({ BEARER_PROXY_ISSUER: 'https://kc.example/realms/a' }), { kind: 'issuer', issuers: [{ href: 'https://kc.example/realms/a' }] })
  t.match(endpoint({ BEARER_PROXY_AUTH: 'runai' }), {
    kind: 'versions',
    endpoints: [{ url: { href: 'https://runai.example/api/v2/token' }, dialect: 'oauth' }, { url: { href: 'https://runai.example/api/v1/token' }, dialect: 'runai-v1' }]
  }, 'Run:ai: /api/v2/token, else the deprecated /api/v1/token')
  t.match(endpoint({ BEARER_PROXY_AUTH: 'runai', BEARER_PROXY_RUNAI_TOKEN_API: 'v2' }), { kind: 'url', endpoint: { url: { href: 'https://runai.example/api/v2/token' }, dialect: 'oauth' } })
  t.match(endpoint({ BEARER_PROXY_AUTH: 'runai-apptoken' }), { endpoint: { url: { href: 'https://runai.example/v1/k8s/auth/oauth/apptoken' }, dialect: 'runai-apptoken' } })
  t.match(endpoint({ BEARER_PROXY_AUTH: 'apiconnect', BEARER_PROXY_USERNAME: 'u', BEARER_PROXY_PASSWORD: 'p' }), { endpoint: { url: { href: 'https://runai.example/api/token' }, dialect: 'apiconnect' } })
})

t.test('an env file is read; real environment variables win over it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-config-'))
  writeFileSync(join(dir, '.env'), '# comment\nBEARER_PROXY_TOKEN_URL=https://idp.example/token\nBEARER_PROXY_CLIENT_ID=from-file\n' +
    'BEARER_PROXY_CLIENT_SECRET="quoted secret"\nBEARER_PROXY_UPSTREAM=https://api.example\nBEARER_PROXY_PORT=9000\n')
  const config = loadConfig({ env: { BEARER_PROXY_PORT: '9001' }, cwd: dir })
  t.equal(config.tokenSettings.credentials.client?.id, 'from-file')
  t.equal(config.port, 9001, 'the environment wins')
  const secret = config.tokenSettings.credentials.client?.secret
  t.equal(secret?.kind === 'value' ? secret.secret.reveal() : undefined, 'quoted secret')
  writeFileSync(join(dir, 'other.env'), 'BEARER_PROXY_TOKEN_URL=https://idp.example/token\nBEARER_PROXY_CLIENT_ID=other\nBEARER_PROXY_CLIENT_SECRET=s\nBEARER_PROXY_UPSTREAM=https://api.example\n')
  t.equal(loadConfig({ env: {}, envFile: join(dir, 'other.env') }).tokenSettings.credentials.client?.id, 'other')
  t.throws(() => loadConfig({ env: {}, envFile: join(dir, 'missing.env') }), { name: 'ConfigError', message: /--env-file .*missing.env: cannot read it \(ENOENT\)/ })
})

t.test('the CLI: no configuration at all exits 2 with directions, no stack trace', async (t) => {
  const empty = mkdtempSync(join(tmpdir(), 'bearer-proxy-empty-'))
  const result = await runCli([], {}, { cwd: empty })
  t.equal(result.code, 2)
  t.match(result.stderr, /no configuration found/)
  t.match(result.stderr, /Examples to copy \(in a clone or the installed package\): \/\S+\/config\/\{keycloak,runai,runai-keycloak,apiconnect\}\.env/)
  t.match(result.stderr, /npm run demo/)
  t.notMatch(result.stderr, /\n\s+at /, 'no stack trace')
  t.equal(result.stdout, '')
})

t.test('the CLI: a bad value exits 2, one line per problem, no secret echoed', async (t) => {
  const result = await runCli(['serve'], { ...minimal, BEARER_PROXY_PORT: '99999', BEARER_PROXY_HOST: '0.0.0.0' })
  t.equal(result.code, 2)
  t.match(result.stderr, /BEARER_PROXY_PORT: must be <= 65535/)
  t.match(result.stderr, /BEARER_PROXY_HOST: 0\.0\.0\.0 is not a loopback address/)
  t.notMatch(result.stderr, /Sup3r-Secret-Value/)
  t.notMatch(result.stderr, /\n\s+at /)
})
