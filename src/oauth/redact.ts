/**
 * What a token endpoint says may be repeated in a log line, an error body or
 * `/-/ready` only after two passes: the known secrets are removed in every
 * spelling an endpoint could echo them in, then only words that read as prose
 * are kept, so that an unknown secret, or a fragment of one, cannot pass either.
 */

const OMITTED = '[…]'
/** A word of prose: letters (a capital first, or a short acronym), joined by `-` or `_`; an abbreviation (`e.g`); or a small number. */
const PROSE_WORD = /^(?:(?:[A-Z]?[a-z]{1,20}|[A-Z]{1,5})(?:[-_'][a-z]{1,20})*|(?:[a-z]\.){1,3}[a-z]|\d{1,6})$/
const PUNCTUATION = /^([("'[{]*)(.*?)([)"'\]}.,;:!?]*)$/s

/** Every spelling of `value` an endpoint could echo: as is, URL- and form-encoded, JSON-escaped, base64 alone and in a Basic pair. */
export function spellings (value: string, clientId: string | undefined): string[] {
  const form = new URLSearchParams({ v: value }).toString().slice(2)
  const found = new Set([value, encodeURIComponent(value), form, JSON.stringify(value).slice(1, -1)])
  const pairs = clientId === undefined ? [] : [`${clientId}:${value}`, `${new URLSearchParams({ v: clientId }).toString().slice(2)}:${form}`]
  for (const plain of [value, ...pairs]) {
    const base64 = Buffer.from(plain).toString('base64')
    found.add(base64)
    found.add(base64.replace(/=+$/, ''))
    found.add(Buffer.from(plain).toString('base64url'))
  }
  return [...found].filter((spelling) => spelling.length >= 4)
}

/** `text` with every spelling of every secret replaced by `[redacted]`. */
export function scrubSecrets (text: string, secrets: readonly string[], clientId?: string): string {
  let clean = text
  for (const secret of secrets) {
    if (secret.length < 4) continue
    for (const spelling of spellings(secret, clientId)) clean = clean.split(spelling).join('[redacted]')
  }
  return clean
}

/**
 * The prose of an endpoint's description: words that are not prose (anything with
 * digits mixed in, `=`, `%`, `/`, `+`, long runs) become `[…]`, and the result is
 * cut at a word boundary.
 */
export function prose (text: string, max = 120): string {
  const words: string[] = []
  let length = 0
  // Control characters (C0, DEL, C1) and bidirectional overrides are spaces: no escape sequence survives.
  for (const word of text.replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, ' ').split(/\s+/)) {
    if (word === '') continue
    const [, open = '', core = '', close = ''] = PUNCTUATION.exec(word) ?? []
    const kept = core === '' || core === '[redacted]' || PROSE_WORD.test(core) ? `${open}${core}${close}` : OMITTED
    if (kept === OMITTED && words.at(-1) === OMITTED) continue
    if (length + kept.length + 1 > max) {
      words.push('…')
      break
    }
    words.push(kept)
    length += kept.length + 1
  }
  return words.join(' ')
}

/** An error code as OAuth and Run:ai send them (`invalid_client`, `401`), or nothing. */
export function errorCode (value: unknown): string | undefined {
  if (typeof value === 'number' && Number.isInteger(value)) return String(value)
  return typeof value === 'string' && /^[a-z][a-z_]{0,40}$|^\d{1,6}$/.test(value) ? value : undefined
}
