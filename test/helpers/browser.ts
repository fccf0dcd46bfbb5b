import { request } from 'undici'

/**
 * A person at a browser: follows the authorization URL through oidc-provider's
 * sign-in and consent pages (any user name signs in), or cancels at the first page,
 * keeping cookies as a browser does, and stops at the redirect back to the loopback
 * listener, which it returns without following (`arrive` does, as the browser would).
 */
export async function signIn (authorizationUrl: string, options: { user?: string, deny?: boolean } = {}): Promise<string> {
  const cookies = new Map<string, string>()
  const remember = (headers: Record<string, string | string[] | undefined>): void => {
    const set = headers['set-cookie']
    for (const line of Array.isArray(set) ? set : set === undefined ? [] : [set]) {
      const [pair = ''] = line.split(';')
      const at = pair.indexOf('=')
      cookies.set(pair.slice(0, at), pair.slice(at + 1))
    }
  }
  const go = async (url: string, form?: Record<string, string>): Promise<{ status: number, location: string | undefined }> => {
    const answer = await request(url, {
      method: form === undefined ? 'GET' : 'POST',
      headers: {
        cookie: [...cookies].map(([name, value]) => `${name}=${value}`).join('; '),
        ...(form === undefined ? {} : { 'content-type': 'application/x-www-form-urlencoded' })
      },
      body: form === undefined ? undefined : new URLSearchParams(form).toString()
    })
    remember(answer.headers)
    await answer.body.dump()
    const location = answer.headers.location
    return { status: answer.statusCode, location: typeof location === 'string' ? new URL(location, url).href : undefined }
  }
  let url = authorizationUrl
  for (let step = 0; step < 12; step++) {
    const { location } = await go(url)
    if (location === undefined) throw new Error(`the provider stopped at ${new URL(url).pathname}`)
    if (location.startsWith('http://127.0.0.1') && new URL(location).pathname === '/callback') return location
    const interaction = /\/interaction\/([^/?]+)$/.exec(new URL(location).pathname)
    if (interaction === null) {
      url = location
      continue
    }
    if (options.deny === true) {
      url = `${location}/abort`
      continue
    }
    // The page says which prompt it is; a login comes first, then consent.
    const page = await request(location, { headers: { cookie: [...cookies].map(([name, value]) => `${name}=${value}`).join('; ') } })
    const html = await page.body.text()
    const prompt = /name="prompt" value="(\w+)"/.exec(html)?.[1] ?? 'login'
    const submitted = await go(location, prompt === 'login' ? { prompt, login: options.user ?? 'alice', password: 'any' } : { prompt })
    if (submitted.location === undefined) throw new Error(`the ${prompt} page did not move on`)
    url = submitted.location
  }
  throw new Error('too many redirects')
}
