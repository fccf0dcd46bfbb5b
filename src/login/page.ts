import { printable } from '../terminal.js'

/**
 * The web page `login` shows in the person's browser at the end: one per outcome,
 * HTML with its style inline and nothing loaded from anywhere (no script, font or
 * image), every value from outside escaped, and headers that keep it out of caches,
 * referrers and frames.
 */

/** How a login ended, as the browser is told. */
export type Outcome =
  | { readonly kind: 'logged_in', readonly provider: string, readonly subject: string | undefined }
  /** The provider's `error` on the callback: the person (or the provider) refused. */
  | { readonly kind: 'denied', readonly provider: string, readonly error: string, readonly description: string | undefined }
  /** The code could not be used any more (`invalid_grant`), or the provider did not answer in time. */
  | { readonly kind: 'expired', readonly provider: string }
  /** The provider answered the code exchange with an error, or with something unusable. */
  | { readonly kind: 'provider_error', readonly provider: string, readonly reason: string }
  /** A callback that is not the login the terminal waits for (another state, or a second one). */
  | { readonly kind: 'not_this_login' }
  | { readonly kind: 'not_found' }
  | { readonly kind: 'wrong_host', readonly address: string }

/** Headers of every page: HTML, never cached or framed, no referrer, nothing but the inline style allowed. */
export const PAGE_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'referrer-policy': 'no-referrer',
  'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  connection: 'close'
} as const

/** The callback's answer: to a clean path of the same listener, so that neither the address bar nor the history keeps the code. */
export function redirectHeaders (location: string): Record<string, string> {
  return { location, 'cache-control': 'no-store', 'referrer-policy': 'no-referrer', 'content-length': '0', connection: 'close' }
}

/** The provider's `error` codes (RFC 6749 §4.1.2.1, OpenID Connect Core §3.1.2.6), worded for a person. */
const DENIALS: Record<string, string> = {
  access_denied: 'The sign-in was cancelled, or access was refused.',
  login_required: 'The provider needs you to sign in again.',
  consent_required: 'The provider needs your consent, which was not given.',
  interaction_required: 'The provider needs you to do something more, which it could not ask here.',
  account_selection_required: 'The provider needs you to choose an account.',
  temporarily_unavailable: 'The provider is unavailable for a moment.',
  server_error: 'The provider ran into an error of its own.',
  invalid_scope: 'The provider refused the access this login asks for (its scope).',
  unauthorized_client: 'The provider does not let this client log people in this way.',
  unsupported_response_type: 'The provider does not let this client log people in this way.',
  invalid_request: 'The provider found the login request malformed.'
}

const AGAIN = 'Run <code>bearer-proxy login</code> in the terminal to try again.'

/** The page for `outcome`: its status and HTML. */
export function loginPage (outcome: Outcome): { readonly status: number, readonly html: string } {
  switch (outcome.kind) {
    case 'logged_in':
      return page(200, 'Logged in', 'ok', `Logged in${outcome.subject === undefined ? '' : ` as <strong>${escape(outcome.subject)}</strong>`}`,
        `<p>At ${escape(outcome.provider)}. The login is kept for <code>bearer-proxy serve</code>, <code>check</code> and <code>token</code>.</p>
<p>You can close this window and return to the terminal.</p>`)
    case 'denied': {
      const worded = DENIALS[outcome.error] ?? 'The provider did not log you in.'
      const said = outcome.description === undefined ? '' : `<p>It said: “${escape(outcome.description)}”.</p>`
      return page(403, 'Not logged in', 'no', 'Not logged in',
        `<p>${escape(worded)} (${escape(outcome.provider)} answered <code>${escape(outcome.error)}</code>.)</p>${said}<p>${AGAIN}</p>`)
    }
    case 'expired':
      return page(408, 'Login expired', 'no', 'The login expired',
        `<p>The sign-in at ${escape(outcome.provider)} could not be completed in time: its code had expired or been used, or the provider did not answer.</p><p>${AGAIN}</p>`)
    case 'provider_error':
      return page(502, 'Login failed', 'no', 'The login did not complete',
        `<p>${escape(outcome.provider)} ${escape(outcome.reason)}.</p><p>The terminal says more. ${AGAIN}</p>`)
    case 'not_this_login':
      return page(400, 'Not this login', 'no', 'Not the login the terminal is waiting for',
        '<p>This answer belongs to another login, or came a second time: nothing was done with it.</p><p>Finish the login in the window the terminal opened, or run <code>bearer-proxy login</code> again.</p>')
    case 'not_found':
      return page(404, 'Not found', 'no', 'Nothing here', '<p>This address is where <code>bearer-proxy login</code> waits for your browser to come back.</p>')
    case 'wrong_host':
      return page(421, 'Wrong address', 'no', 'Wrong address', `<p>This listener answers only at <code>${escape(outcome.address)}</code>.</p>`)
  }
}

function page (status: number, title: string, mood: 'ok' | 'no', heading: string, body: string): { status: number, html: string } {
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>bearer-proxy: ${escape(title)}</title>
<style>
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; background: #f6f8fa; margin: 0; }
main { max-width: 34rem; margin: 12vh auto; background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 2rem 2.25rem; }
h1 { font-size: 1.4rem; margin: 0 0 1rem; display: flex; align-items: center; gap: .6rem; }
h1::before { content: "${mood === 'ok' ? '✓' : '!'}"; display: inline-grid; place-items: center; width: 1.8rem; height: 1.8rem; border-radius: 50%; color: #fff; background: ${mood === 'ok' ? '#1a7f37' : '#cf222e'}; font-size: 1rem; }
p { margin: .6rem 0; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, monospace; background: #eff1f3; padding: .1em .35em; border-radius: 4px; }
footer { margin-top: 1.5rem; color: #59636e; font-size: .85rem; }
@media (prefers-color-scheme: dark) {
  body { color: #e6edf3; background: #0d1117; }
  main { background: #161b22; border-color: #30363d; }
  code { background: #262c36; }
  footer { color: #9198a1; }
}
</style>
</head>
<body>
<main>
<h1>${heading}</h1>
${body}
<footer>bearer-proxy login</footer>
</main>
</body>
</html>
`
  return { status, html }
}

/** Text from outside as HTML text: escaped, without control characters, cut to 300 characters. */
function escape (text: string): string {
  return printable(text, 300).replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`)
}
