import { once } from 'node:events'
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { loginPage, type Outcome } from '../src/login/page.js'
import { returnTo, signIn, startLogin, type Returned } from './helpers/browser.js'
import { startIdentity } from './helpers/stack.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
/** Screenshots of each outcome, kept after the run (.tap/ is not committed). */
const SHOTS = join(root, '.tap', 'screenshots')

const storeOf = (): string => join(mkdtempSync(join(tmpdir(), 'bearer-proxy-page-')), 'config', 'logins.json')

/** oidc-provider with its own sign-in and consent pages, and `cli`, a public native client. */
async function person (t: Test): ReturnType<typeof startIdentity> {
  return await startIdentity(t, { accessTokenTtl: 600, interactive: true, clients: [{ clientId: 'cli', authMethod: 'none', native: true }] })
}

/** What every page and the callback's redirect must carry, and must not. */
function assertHeaders (t: Test, returned: Returned): void {
  t.equal(returned.redirect.status, 303, 'the callback answers with a redirect')
  t.match(returned.redirect.location, /^\/(result|not-this-login)$/, 'to a clean path of the listener: no code, no state')
  t.equal(returned.redirect.headers['cache-control'], 'no-store')
  t.equal(returned.redirect.headers['referrer-policy'], 'no-referrer')
  t.equal(returned.headers['content-type'], 'text/html; charset=utf-8')
  t.equal(returned.headers['cache-control'], 'no-store')
  t.equal(returned.headers['referrer-policy'], 'no-referrer')
  t.equal(returned.headers['x-content-type-options'], 'nosniff')
  t.match(returned.headers['content-security-policy'], /^default-src 'none'; style-src 'unsafe-inline';/)
  t.equal(returned.headers['set-cookie'], undefined, 'no cookie')
  t.equal(returned.redirect.headers['set-cookie'], undefined)
  t.notMatch(returned.body, /code=|state=/, 'nothing on the page carries the code or state')
}

t.test('each outcome is a page of its own: a title, what happened, what to do next, nothing loaded from anywhere, every outside value escaped', async (t) => {
  const hostile = '<script>alert(1)</script>"\u001b[2J\u202e'
  const outcomes: Array<[Outcome, number, RegExp]> = [
    [{ kind: 'logged_in', provider: 'https://idp.example', subject: 'alice' }, 200, /Logged in as <strong>alice<\/strong>[\s\S]*close this window/],
    [{ kind: 'logged_in', provider: 'https://idp.example', subject: undefined }, 200, /<h1>Logged in<\/h1>/],
    [{ kind: 'denied', provider: 'https://idp.example', error: 'access_denied', description: 'User cancelled' }, 403, /cancelled, or access was refused[\s\S]*access_denied[\s\S]*User cancelled[\s\S]*try again/],
    [{ kind: 'denied', provider: 'https://idp.example', error: 'something_new', description: undefined }, 403, /did not log you in[\s\S]*something_new/],
    [{ kind: 'expired', provider: 'https://idp.example' }, 408, /The login expired[\s\S]*try again/],
    [{ kind: 'provider_error', provider: 'https://idp.example', reason: 'refused the code (it answered 500)' }, 502, /did not complete[\s\S]*refused the code/],
    [{ kind: 'not_this_login', }, 400, /Not the login the terminal is waiting for/],
    [{ kind: 'not_found' }, 404, /Nothing here/],
    [{ kind: 'wrong_host', address: 'http://127.0.0.1:1/' }, 421, /Wrong address/]
  ]
  for (const [outcome, status, says] of outcomes) {
    const page = loginPage(outcome)
    t.equal(page.status, status, outcome.kind)
    t.match(page.html, says, outcome.kind)
    t.match(page.html, /^<!doctype html>[\s\S]*<title>bearer-proxy: [^<]+<\/title>/)
    t.notMatch(page.html, /<script|<img|<link(?! rel="icon" href="data:,")|<iframe|src=|@import|url\(/i, `${outcome.kind}: nothing loaded`)
  }
  // What a provider or an ID token says is text, never markup, and never a control character.
  for (const outcome of [
    { kind: 'logged_in', provider: 'https://idp.example', subject: hostile },
    { kind: 'denied', provider: 'https://idp.example', error: hostile, description: hostile }
  ] as Outcome[]) {
    const { html } = loginPage(outcome)
    t.notMatch(html, /<script>alert/)
    t.match(html, /&#60;script&#62;alert\(1\)&#60;\/script&#62;&#34;/)
    t.notMatch(html, /[\u001b\u202e]/)
  }
})

t.test('over HTTP: the callback sends the browser on to /result, which shows the outcome with the headers that keep it private', async (t) => {
  const idp = await person(t)
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: storeOf() }

  const good = await startLogin(t, env)
  const goodExit = once(good.child, 'exit') as Promise<[number]>
  const returned = await returnTo(await signIn(good.url, { user: 'alice' }))
  assertHeaders(t, returned)
  t.equal(returned.status, 200)
  t.match(returned.body, /Logged in as <strong>alice<\/strong>/)
  t.match(returned.body, new RegExp(`At ${idp.issuer.replace(/[.:/]/g, '\\$&')}`))
  t.equal((await goodExit)[0], 0)

  const refused = await startLogin(t, env)
  const refusedExit = once(refused.child, 'exit') as Promise<[number]>
  const denied = await returnTo(await signIn(refused.url, { deny: true }))
  assertHeaders(t, denied)
  t.equal(denied.status, 403)
  t.match(denied.body, /Not logged in[\s\S]*access_denied/)
  t.equal((await refusedExit)[0], 1)

  // A token endpoint that does not answer within TIMEOUT: the login expired, and the page says so.
  const slow = await startLogin(t, { ...env, BEARER_PROXY_TIMEOUT: '0.5' })
  const slowExit = once(slow.child, 'exit') as Promise<[number]>
  const back = await signIn(slow.url, { user: 'alice' })
  idp.slowMs = 3000
  idp.mode = 'slow'
  const late = await returnTo(back)
  idp.mode = 'normal'
  assertHeaders(t, late)
  t.equal(late.status, 408)
  t.match(late.body, /The login expired[\s\S]*did not answer/)
  t.equal((await slowExit)[0], 1)
})

const noBrowser = existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install -y chromium; .ci/run installs it): the browser tests are skipped`
t.test('in a real browser: headless Chromium signs in at oidc-provider\'s own pages, or cancels, and reads the page it ends on', { skip: noBrowser }, async (t) => {
  const { default: puppeteer } = await import('puppeteer-core')
  mkdirSync(SHOTS, { recursive: true })
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: mkdtempSync(join(tmpdir(), 'bearer-proxy-chromium-')),
    // As the machine's notes say: without the background-networking flags Chromium keeps calling hosts this machine cannot reach.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.teardown(async () => await browser.close())
  const idp = await person(t)
  const env = { BEARER_PROXY_ISSUER: idp.issuer, BEARER_PROXY_CLIENT_ID: 'cli', BEARER_PROXY_TOKEN_STORE: storeOf() }

  /** The login in a fresh browser context: every request the page made, and where it ended. */
  const run = async (act: (page: import('puppeteer-core').Page, listener: string) => Promise<void>, shot: string): Promise<{ url: string, text: string, type: string | undefined, listenerRequests: string[], exitCode: number }> => {
    const login = await startLogin(t, env)
    // The login ends as soon as the browser has its page: its exit is listened for from the start.
    const exited = once(login.child, 'exit') as Promise<[number]>
    const listener = new URL(new URL(login.url).searchParams.get('redirect_uri') as string).origin
    const context = await browser.createBrowserContext()
    const page = await context.newPage()
    const requested: string[] = []
    page.on('request', (request) => { requested.push(request.url()) })
    await page.goto(login.url, { waitUntil: 'load' })
    await act(page, listener)
    await page.waitForFunction((origin: string) => location.origin === origin && location.pathname !== '/callback', { timeout: 15_000 }, listener)
    const ended = page.url()
    const text = await page.evaluate(() => document.body.innerText)
    const type = await page.evaluate(() => document.contentType)
    await page.screenshot({ path: join(SHOTS, `${shot}.png`) })
    if (process.env.UPDATE_SCREENSHOT === '1' && shot === 'logged-in') await page.screenshot({ path: join(root, 'docs', 'login-page.png') })
    await context.close()
    const [exitCode] = await exited
    return { url: ended, text, type, listenerRequests: requested.filter((url) => url.startsWith(listener)).map((url) => url.slice(listener.length).replace(/\?.*$/, '?…')), exitCode }
  }

  /** Signs in as alice at oidc-provider's login page, then consents. */
  const signInAndConsent = async (page: import('puppeteer-core').Page): Promise<void> => {
    await page.type('input[name="login"]', 'alice')
    await page.type('input[name="password"]', 'any')
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')])
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')])
  }
  const signedIn = await run(signInAndConsent, 'logged-in')
  t.match(signedIn.url, /^http:\/\/127\.0\.0\.1:\d+\/result$/, 'the address bar: no code, no state')
  t.equal(signedIn.type, 'text/html')
  t.match(signedIn.text, /Logged in as\s+alice/)
  t.match(signedIn.text, /close this window and return to the terminal/)
  t.same(signedIn.listenerRequests, ['/callback?…', '/result'], 'the callback, the page, and nothing else')
  t.equal(signedIn.exitCode, 0)

  const cancelled = await run(async (page) => {
    await Promise.all([page.waitForNavigation(), page.click('a[href*="abort"]')])
  }, 'denied')
  t.match(cancelled.url, /^http:\/\/127\.0\.0\.1:\d+\/result$/)
  t.match(cancelled.text, /Not logged in/)
  t.match(cancelled.text, /cancelled, or access was refused/)
  t.match(cancelled.text, /bearer-proxy login/)
  t.same(cancelled.listenerRequests, ['/callback?…', '/result'])
  t.equal(cancelled.exitCode, 1)

  // A callback that is not this login's (another state), then the real one, which the token endpoint refuses.
  let mismatch = { url: '', text: '', status: 0 }
  const refusedCode = await run(async (page, listener) => {
    const answer = await page.goto(`${listener}/callback?state=someone-elses&code=forged-code`, { waitUntil: 'load' })
    mismatch = { url: page.url(), text: await page.evaluate(() => document.body.innerText), status: answer?.status() ?? 0 }
    await page.screenshot({ path: join(SHOTS, 'not-this-login.png') })
    await page.goBack({ waitUntil: 'load' })
    idp.mode = 'error'
    await signInAndConsent(page)
  }, 'provider-error')
  idp.mode = 'normal'
  t.match(mismatch.url, /^http:\/\/127\.0\.0\.1:\d+\/not-this-login$/, 'another state: a page saying so, no code in the address bar')
  t.equal(mismatch.status, 400)
  t.match(mismatch.text, /Not the login the terminal is waiting for/)
  t.match(refusedCode.url, /\/result$/)
  t.match(refusedCode.text, /The login did not complete[\s\S]*refused the code \(it answered 503\)/)
  t.equal(refusedCode.exitCode, 1)

  // A code the provider no longer takes (here, one changed on its way back): invalid_grant, the login expired.
  const expired = await run(async (page, listener) => {
    await page.setRequestInterception(true)
    page.on('request', (request) => {
      const url = new URL(request.url())
      if (url.origin === listener && url.pathname === '/callback' && url.searchParams.has('code')) {
        url.searchParams.set('code', 'a-code-long-expired')
        void request.continue({ url: url.href })
      } else {
        void request.continue()
      }
    })
    await signInAndConsent(page)
  }, 'expired')
  t.match(expired.url, /\/result$/)
  t.match(expired.text, /The login expired[\s\S]*bearer-proxy login/)
  t.equal(expired.exitCode, 1)
})
