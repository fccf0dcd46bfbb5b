import type { Test } from 'tap'

/** Each secret, and for JWTs their payload and signature parts, which identify them as well; short values are left out. */
export function fragments (values: Iterable<string>): string[] {
  const out = new Set<string>()
  for (const value of values) {
    out.add(value)
    const parts = value.split('.')
    if (parts.length === 3) {
      out.add(parts[1] as string)
      out.add(parts[2] as string)
    }
  }
  return [...out].filter((value) => value.length >= 8)
}

/** The spellings a secret can be echoed in: URL- and form-encoded, JSON-escaped, base64 alone and in a `Basic` pair with `clientId`. */
export function spellings (value: string, clientId: string): string[] {
  const form = new URLSearchParams({ v: value }).toString().slice(2)
  const pairs = [`${clientId}:${value}`, `${clientId}:${form}`]
  return [value, form, encodeURIComponent(value), JSON.stringify(value).slice(1, -1),
    ...[value, ...pairs].flatMap((plain) => [Buffer.from(plain).toString('base64').replace(/=+$/, ''), Buffer.from(plain).toString('base64url')])]
}

/** Every run of 8 characters of `value`: a fragment left after a cut is a leak too. */
export function pieces (value: string): string[] {
  return Array.from({ length: Math.max(1, value.length - 7) }, (_, i) => value.slice(i, i + 8))
}

/** Fails, naming only the first characters of each, when any of `secrets` appears in `text`. */
export function assertNoSecret (t: Test, where: string, text: string, secrets: readonly string[]): void {
  const leaked = secrets.filter((secret) => text.includes(secret))
  t.same(leaked.map((secret) => `${secret.slice(0, 5)}…`), [], `${where}: no secret or token`)
}
