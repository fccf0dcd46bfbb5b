import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { inspect } from 'node:util'

const REDACTED = '[redacted]'

/** A value that cannot print itself: logs, JSON and template strings show `[redacted]`. */
export class Secret {
  readonly #value: string

  constructor (value: string) {
    this.#value = value
  }

  /** The real value, for the one place that must send it. */
  reveal (): string {
    return this.#value
  }

  equals (other: Secret | undefined): boolean {
    return other !== undefined && other.#value === this.#value
  }

  toString (): string { return REDACTED }
  toJSON (): string { return REDACTED }
  [inspect.custom] (): string { return REDACTED }
}

/** Where a secret comes from: a fixed value, or a file re-read (and trimmed) on every use. */
export type SecretSource = { readonly kind: 'value', readonly secret: Secret } | { readonly kind: 'file', readonly path: string }

export function readSecret (source: SecretSource): Secret {
  if (source.kind === 'value') return source.secret
  return new Secret(readFileSync(source.path, 'utf8').trim())
}

/**
 * A digest of a secret's value as it is now, to notice that it changed without
 * keeping it: `unreadable <code>` when its file cannot be read.
 */
export function digestOf (source: SecretSource): string {
  try {
    return createHash('sha256').update(readSecret(source).reveal()).digest('hex')
  } catch (error) {
    return `unreadable ${(error as NodeJS.ErrnoException).code ?? ''}`
  }
}
