import type { ChildProcess } from 'node:child_process'
import { request } from 'undici'
import { cleanDirectory, collect, spawnCli, type Teardown, waitForLine } from './stack.js'

/** A browser's memory: cookies kept as they are set, sent back with every request. */
class Browser {
  readonly #cookies = new Map<string, string>()

  async go (url: string, form?: Record<string, string>): Promise<{ status: number, location: string | undefined, html: string }> {
    const answer = await request(url, {
      method: form === undefined ? 'GET' : 'POST',
      headers: {
        cookie: [...this.#cookies].map(([name, value]) => `${name}=${value}`).join('; '),
        ...(form === undefined ? {} : { 'content-type': 'application/x-www-form-urlencoded' })
      },
      body: form === undefined ? undefined : new URLSearchParams(form).toString()
    })
    const set = answer.headers['set-cookie']
    for (const line of Array.isArray(set) ? set : set === undefined ? [] : [set]) {
      const [pair = ''] = line.split(';')
      const at = pair.indexOf('=')
      this.#cookies.set(pair.slice(0, at), pair.slice(at + 1))
    }
    const html = await answer.body.text()
    const location = answer.headers.location
    return { status: answer.statusCode, location: typeof location === 'string' ? new URL(location, url).href : undefined, html }
  }

  /**
   * Follows redirects from `url` through oidc-provider's sign-in and consent pages (any
   * user name signs in), or cancels at the first page; stops at a redirect to the
   * loopback `/callback`, which it returns, or at a page that does not redirect.
   */
  async through (url: string, options: { user?: string, deny?: boolean }): Promise<string> {
    for (let step = 0; step < 12; step++) {
      if (/\/interaction\/[^/?]+$/.test(new URL(url).pathname)) {
        // The page says which prompt it is; a login comes first, then consent. Cancelling is its abort link.
        const { html } = await this.go(url)
        const prompt = /name="prompt" value="(\w+)"/.exec(html)?.[1] ?? 'login'
        const submitted = options.deny === true
          ? await this.go(`${url}/abort`)
          : await this.go(url, prompt === 'login' ? { prompt, login: options.user ?? 'alice', password: 'any' } : { prompt })
        if (submitted.location === undefined) throw new Error(`the ${prompt} page did not move on`)
        url = submitted.location
        continue
      }
      const { location } = await this.go(url)
      if (location === undefined) return url
      if (location.startsWith('http://127.0.0.1') && new URL(location).pathname === '/callback') return location
      url = location
    }
    throw new Error('too many redirects')
  }
}

/**
 * A person at a browser: follows the authorization URL through the provider's pages
 * and stops at the redirect back to the loopback listener, which it returns without
 * following (the test does, as the browser would).
 */
export async function signIn (authorizationUrl: string, options: { user?: string, deny?: boolean } = {}): Promise<string> {
  return await new Browser().through(authorizationUrl, options)
}

/** A person approving (or refusing) a device login (RFC 8628) at the provider's verification page, with its code. */
export async function approveDevice (verificationUri: string, userCode: string, options: { user?: string, deny?: boolean } = {}): Promise<void> {
  const browser = new Browser()
  const xsrf = (html: string): string => /name="xsrf" value="([^"]+)"/.exec(html)?.[1] ?? ''
  const entry = await browser.go(verificationUri)
  const confirmation = await browser.go(verificationUri, { xsrf: xsrf(entry.html), user_code: userCode })
  const decided = await browser.go(verificationUri, { xsrf: xsrf(confirmation.html), user_code: userCode, ...(options.deny === true ? { abort: 'yes' } : { confirm: 'yes' }) })
  if (decided.location !== undefined) await browser.through(decided.location, options)
}

/** `bearer-proxy login` started, and the URL it asks the person to open. */
export async function startLogin (t: Teardown, env: Record<string, string>): Promise<{ child: ChildProcess, url: string, output: () => { stdout: string, stderr: string } }> {
  const child = spawnCli(['login'], env, cleanDirectory())
  t.teardown(() => { child.kill('SIGKILL') })
  const output = collect(child)
  const line = await waitForLine(child, /^\s+http:\/\/127\.0\.0\.1:\d+\/\S*auth\?/, 10_000, 'stderr')
  return { child, url: line.trim(), output }
}


/** What a browser gets back at the login's loopback listener: the callback's redirect, then the page it leads to. */
export interface Returned {
  readonly redirect: { readonly status: number, readonly location: string, readonly headers: Record<string, string | string[] | undefined> }
  readonly status: number
  readonly url: string
  readonly headers: Record<string, string | string[] | undefined>
  readonly body: string
}

/** The browser's return to `callback` (a /callback URL with its query), followed as a browser does: a 303, then a GET of the clean path. */
export async function returnTo (callback: string | URL): Promise<Returned> {
  const answer = await request(callback)
  await answer.body.dump()
  const location = String(answer.headers.location ?? '')
  const page = new URL(location, callback)
  const shown = await request(page)
  return {
    redirect: { status: answer.statusCode, location, headers: answer.headers },
    status: shown.statusCode,
    url: page.href,
    headers: shown.headers,
    body: await shown.body.text()
  }
}
