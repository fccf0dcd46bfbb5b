import { type DestinationStream, pino, type Logger } from 'pino'

/** Field names that never carry their value into a log line, at any depth. */
const SECRET_NAME = /authori[sz]ation|cookie|secret|password|passwd|token|api[-_]?key|credential|inbound[-_]?key/i
const seen = new Map<string, boolean>()

function isSecretName (name: string): boolean {
  let secret = seen.get(name)
  if (secret === undefined) {
    secret = SECRET_NAME.test(name)
    if (seen.size < 10_000) seen.set(name, secret)
  }
  return secret
}

/**
 * Second line of defence (the first: secrets are `Secret` values that print
 * `[redacted]`): any field named like a credential is replaced, in plain objects
 * and arrays down to a few levels. A name check cached per key, so a request line
 * costs a handful of map lookups instead of path-based redaction.
 */
export function scrub (value: unknown, depth = 0): unknown {
  if (depth > 4 || typeof value !== 'object' || value === null) return value
  if (Array.isArray(value)) return value.some((item) => typeof item === 'object' && item !== null) ? value.map((item) => scrub(item, depth + 1)) : value
  if (Object.getPrototypeOf(value) !== Object.prototype) return value
  let copy: Record<string, unknown> | undefined
  for (const key in value) {
    const field = (value as Record<string, unknown>)[key]
    const clean = isSecretName(key) && field !== undefined && field !== null ? '[redacted]' : scrub(field, depth + 1)
    if (clean !== field) {
      copy ??= { ...(value as Record<string, unknown>) }
      copy[key] = clean
    }
  }
  return copy ?? value
}

/** pino JSON lines on stdout (`fd` 1), or stderr (2) for commands whose stdout is their answer. */
export function createLogger (level: string, fd: 1 | 2 | DestinationStream = 1): Logger {
  return pino({
    level,
    base: { name: 'bearer-proxy' },
    formatters: { log: (object) => scrub(object) as Record<string, unknown> },
    timestamp: pino.stdTimeFunctions.isoTime
  }, typeof fd === 'number' ? pino.destination({ fd, sync: fd === 2 }) : fd)
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const
type LogFn = (...args: unknown[]) => void

/**
 * Fastify's per-request logger, made lazily: a pino child (with its `reqId`
 * binding run through redaction) is created only when a line is actually written,
 * not for every request.
 */
export class RequestLogger {
  readonly #root: Logger
  readonly #reqId: string
  #child: Logger | undefined

  constructor (root: Logger, reqId: string) {
    this.#root = root
    this.#reqId = reqId
  }

  get level (): string { return this.#root.level }
  set level (level: string) { this.#real().level = level }

  #real (): Logger {
    this.#child ??= this.#root.child({ reqId: this.#reqId })
    return this.#child
  }

  child (bindings: Record<string, unknown>, options?: object): Logger {
    return this.#real().child(bindings, options)
  }

  silent (): void {}
  declare fatal: LogFn
  declare error: LogFn
  declare warn: LogFn
  declare info: LogFn
  declare debug: LogFn
  declare trace: LogFn

  static {
    for (const level of LEVELS) {
      Object.defineProperty(RequestLogger.prototype, level, {
        value: function (this: RequestLogger, ...args: unknown[]) {
          if (this.#root.isLevelEnabled(level)) (this.#real()[level] as LogFn)(...args)
        }
      })
    }
  }
}
