import t from 'tap'
import { request } from 'undici'
import { metadataUrls } from '../src/oauth/discovery.js'
import { cleanDirectory, collect, runCli, spawnCli, startTestProxy, startTokenManager, type Teardown, waitForLine } from './helpers/stack.js'
import { type Scripted, startTokenEndpoint, type TokenEndpoint } from './helpers/token-endpoint.js'

/**
 * Finding the token endpoint as a real control plane makes it hard: the first
 * candidate answers anything but a discovery document, and the next is tried; a
 * plain OAuth 2.0 server publishes only RFC 8414 metadata. For `serve`, `token`,
 * `check` and `login` alike, and for Run:ai's own sign-in realm.
 */

const CLIENT = { id: 'svc', secret: 'discovery-Client-Secret-3371' }

/** What a control plane's gateway, single-page app or sign-in answers where a realm is not. */
const NOT_A_DOCUMENT: Array<[string, (self: string) => Scripted, RegExp]> = [
  ['401 from a gateway', () => ({ status: 401, body: { error: 'unauthorized', error_description: 'a token is needed' } }), /answered 401/],
  ['403 from a gateway', () => ({ status: 403, body: '<html>Forbidden</html>', contentType: 'text/html' }), /answered 403/],
  ['a single-page app\'s HTML', () => ({ body: '<!doctype html><html><div id="app"></div></html>', contentType: 'text/html' }), /answered 200 with a body that is not JSON/],
  ['a redirect to a sign-in page', (self) => ({ status: 302, body: '', headers: { location: `${self}/login` } }), /answered 302 \(a redirect, not followed\)/],
  ['JSON without token_endpoint', (self) => ({ body: { issuer: `${self}/realms/tenant`, authorization_endpoint: `${self}/auth` } }), /answered a document that has no usable token_endpoint/],
  ['JSON of another issuer', () => ({ body: { issuer: 'https://other.example/realms/tenant', token_endpoint: 'https://other.example/token' } }), /answered a document that names another issuer than/],
  ['a body that is not JSON', () => ({ body: 'not json at all', contentType: 'application/json' }), /answered 200 with a body that is not JSON/],
  ['a 500', () => ({ status: 500, body: { error: 'server_error' } }), /answered 500 server_error/]
]

/** A control plane whose `/realms/tenant` answers `first`, and whose `/auth/realms/tenant` is a realm with a token endpoint. */
async function controlPlane (t: Teardown, first: (self: string) => Scripted): Promise<TokenEndpoint> {
  const plane: TokenEndpoint = await startTokenEndpoint(t, (call) => {
    const path = call.path.split('?')[0] as string
    if (path.startsWith('/realms/tenant') || path === '/.well-known/oauth-authorization-server/realms/tenant') return first(plane.url)
    if (path === '/auth/realms/tenant/.well-known/openid-configuration') {
      const issuer = `${plane.url}/auth/realms/tenant`
      return { body: { issuer, token_endpoint: `${issuer}/protocol/openid-connect/token`, authorization_endpoint: `${issuer}/auth`, device_authorization_endpoint: `${issuer}/device` } }
    }
    if (path === '/auth/realms/tenant/protocol/openid-connect/token') {
      return call.fields.client_secret === CLIENT.secret ? { body: { access_token: 'realm-token', token_type: 'Bearer', expires_in: 300 } } : { status: 401, body: { error: 'invalid_client' } }
    }
    if (path === '/auth/realms/tenant/device') return { status: 400, body: { error: 'invalid_scope' } }
    return { status: 404, body: { error: 'not_found' } }
  })
  return plane
}

const realmEnv = (plane: TokenEndpoint): Record<string, string> => ({
  BEARER_PROXY_UPSTREAM: plane.url,
  BEARER_PROXY_REALM: 'tenant',
  BEARER_PROXY_CLIENT_ID: CLIENT.id,
  BEARER_PROXY_CLIENT_SECRET: CLIENT.secret
})

t.test('UPSTREAM and REALM: whatever /realms/<REALM> answers instead of a discovery document, /auth/realms/<REALM> is tried next (serve, token, check)', async (t) => {
  for (const [what, first] of NOT_A_DOCUMENT) {
    const plane = await controlPlane(t, first)
    const { tokens } = startTokenManager(t, realmEnv(plane))
    t.equal((await tokens.get()).reveal(), 'realm-token', `${what}: the token came from the second candidate`)
  }
  // Through the CLI and the proxy, with one of them.
  const plane = await controlPlane(t, (self) => ({ status: 302, body: '', headers: { location: `${self}/login` } }))
  const token = await runCli(['token'], realmEnv(plane))
  t.equal(token.code, 0, token.stderr)
  t.equal(token.stdout.trim(), 'realm-token')
  const check = await runCli(['check'], realmEnv(plane))
  t.match(check.stdout, /ok: token obtained/, check.stderr)
  const { url } = await startTestProxy(t, { ...realmEnv(plane), BEARER_PROXY_PORT: '0' })
  const answer = await request(`${url}/x`)
  t.equal(answer.statusCode, 404, 'forwarded with the token (the control plane has no /x)')
  await answer.body.dump()
  t.ok(plane.calls.some((call) => call.path === '/x' && call.headers.authorization === 'Bearer realm-token'))
})

t.test('when no candidate has a discovery document, one message names every URL tried and what each answered', async (t) => {
  const plane = await startTokenEndpoint(t, (call) => call.path.includes('/auth/') ? { status: 401, body: { error: 'unauthorized' } } : { body: '<html></html>', contentType: 'text/html' })
  const { tokens } = startTokenManager(t, realmEnv(plane))
  await t.rejects(tokens.get(), {
    code: 'token_unavailable',
    message: new RegExp('^no usable discovery document: ' + [
      '/realms/tenant/.well-known/openid-configuration answered 200 with a body that is not JSON',
      '/.well-known/oauth-authorization-server/realms/tenant answered 200 with a body that is not JSON',
      '/auth/realms/tenant/.well-known/openid-configuration answered 401 unauthorized',
      '/.well-known/oauth-authorization-server/auth/realms/tenant answered 401 unauthorized'
    ].map((part) => `http://127\\.0\\.0\\.1:\\d+${part.replace(/[.?]/g, '\\$&')}`).join('; ') + '$')
  })
  const ready = await startTestProxy(t, { ...realmEnv(plane), BEARER_PROXY_PORT: '0' })
  await ready.proxy.tokens.get().catch(() => {})
  const status = await request(`${ready.url}/-/ready`)
  t.equal(status.statusCode, 503)
  t.match(await status.body.json(), { reason: /^no usable discovery document: .*answered 401 unauthorized$/ })
})

t.test('an ISSUER that is a plain OAuth 2.0 authorization server, publishing only RFC 8414 metadata (inserted before the issuer\'s path), is found', async (t) => {
  t.same(metadataUrls(new URL('https://as.example/tenant/one/')).map((url) => url.href), ['https://as.example/tenant/one/.well-known/openid-configuration', 'https://as.example/.well-known/oauth-authorization-server/tenant/one'])
  t.same(metadataUrls(new URL('https://as.example')).map((url) => url.href), ['https://as.example/.well-known/openid-configuration', 'https://as.example/.well-known/oauth-authorization-server'])
  for (const path of ['', '/tenant']) {
    const server: TokenEndpoint = await startTokenEndpoint(t, (call) => {
      const issuer = `${server.url}${path}`
      if (call.path === `/.well-known/oauth-authorization-server${path}`) return { body: { issuer, token_endpoint: `${issuer}/oauth/token`, grant_types_supported: ['client_credentials'] } }
      if (call.path === `${path}/oauth/token`) return { body: { access_token: `as-token${path.replace('/', '-')}`, token_type: 'Bearer', expires_in: 60 } }
      return { status: 404, body: {} }
    })
    const { tokens } = startTokenManager(t, { BEARER_PROXY_ISSUER: `${server.url}${path}`, BEARER_PROXY_CLIENT_ID: CLIENT.id, BEARER_PROXY_CLIENT_SECRET: CLIENT.secret })
    t.equal((await tokens.get()).reveal(), `as-token${path.replace('/', '-')}`, `issuer ${path || '(no path)'}`)
    t.same(server.calls.map((call) => call.path), [`${path}/.well-known/openid-configuration`, `/.well-known/oauth-authorization-server${path}`, `${path}/oauth/token`])
    // The same checks: RFC 8414 §3.3's issuer match.
  }
  const liar: TokenEndpoint = await startTokenEndpoint(t, (call) => call.path === '/.well-known/oauth-authorization-server' ? { body: { issuer: 'https://elsewhere.example', token_endpoint: `${liar.url}/token` } } : { status: 404, body: {} })
  const { tokens } = startTokenManager(t, { BEARER_PROXY_ISSUER: liar.url, BEARER_PROXY_CLIENT_ID: CLIENT.id, BEARER_PROXY_CLIENT_SECRET: CLIENT.secret })
  await t.rejects(tokens.get(), { message: /oauth-authorization-server answered a document that names another issuer than/ })
  t.notOk(liar.calls.some((call) => call.path === '/token'), 'no token request to a document of another issuer')
})

t.test('login with UPSTREAM and REALM, and with Run:ai\'s own sign-in realm, moves on the same way', async (t) => {
  for (const [what, first] of NOT_A_DOCUMENT.slice(0, 4)) {
    const plane = await controlPlane(t, first)
    const child = spawnCli(['login'], { ...realmEnv(plane), BEARER_PROXY_TOKEN_STORE: `${cleanDirectory()}/logins-${Math.random()}.json` }, cleanDirectory())
    t.teardown(() => { child.kill('SIGKILL') })
    const output = collect(child)
    const line = await waitForLine(child, /^\s+http:\/\/127\.0\.0\.1:\d+\/auth\/realms\/tenant\/auth\?/, 10_000, 'stderr').catch((error: Error) => error.message)
    t.match(line, /\/auth\/realms\/tenant\/auth\?/, `${what}: the sign-in is at the realm found second`)
    child.kill('SIGKILL')
    t.notMatch(output().stderr, /discovery-Client-Secret/)
  }
  // Run:ai's sign-in tries /auth/realms/<REALM> first, then /realms/<REALM>.
  const runai: TokenEndpoint = await startTokenEndpoint(t, (call) => {
    const path = call.path.split('?')[0] as string
    if (path.startsWith('/auth/realms/tenant')) return { status: 403, body: '<html>Forbidden</html>', contentType: 'text/html' }
    if (path === '/realms/tenant/.well-known/openid-configuration') return { body: { issuer: `${runai.url}/realms/tenant`, token_endpoint: `${runai.url}/realms/tenant/token`, authorization_endpoint: `${runai.url}/realms/tenant/auth` } }
    return { status: 404, body: {} }
  })
  const child = spawnCli(['login'], { BEARER_PROXY_AUTH: 'runai', BEARER_PROXY_UPSTREAM: runai.url, BEARER_PROXY_REALM: 'tenant', BEARER_PROXY_CLIENT_ID: 'runai-cli', BEARER_PROXY_TOKEN_STORE: `${cleanDirectory()}/logins-runai.json` }, cleanDirectory())
  t.teardown(() => { child.kill('SIGKILL') })
  t.match(await waitForLine(child, /^\s+http:\/\/127\.0\.0\.1:\d+\/realms\/tenant\/auth\?/, 10_000, 'stderr'), /\/realms\/tenant\/auth\?/, 'Run:ai: the realm at /realms/ after /auth/realms/ answered 403')
  child.kill('SIGKILL')
})
