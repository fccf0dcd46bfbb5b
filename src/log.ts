import { createRequire } from 'node:module'
import { isatty } from 'node:tty'
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

export type LogFormat = 'json' | 'pretty'

/**
 * pino lines on stdout (`fd` 1), or stderr (2) for commands whose stdout is their answer:
 * JSON, or one human-readable line per entry (pino-pretty, in-process, loaded only then)
 * when `format` says so or, unset, when the output is a terminal.
 */
export function createLogger (level: string, fd: 1 | 2 | DestinationStream = 1, format?: LogFormat): Logger {
  const pretty = format === 'pretty' || (format === undefined && typeof fd === 'number' && isatty(fd))
  const destination = typeof fd !== 'number'
    ? fd
    : pretty
      ? (createRequire(import.meta.url)('pino-pretty') as (options: object) => DestinationStream)({
          destination: fd,
          sync: true,
          colorize: isatty(fd),
          singleLine: true,
          translateTime: 'SYS:HH:MM:ss.l',
          ignore: 'pid,hostname,name,event'
        })
      : pino.destination({ fd, sync: fd === 2 })
  return pino({
    level,
    base: { name: 'bearer-proxy' },
    formatters: { log: (object) => scrub(object) as Record<string, unknown> },
    timestamp: pino.stdTimeFunctions.isoTime
  }, destination)
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
  /** A route's own `logLevel`: lines below it are dropped, whatever the root's level. */
  readonly #floor: number
  #child: Logger | undefined

  constructor (root: Logger, reqId: string, level?: string) {
    this.#root = root
    this.#reqId = reqId
    this.#floor = level === undefined ? 0 : root.levels.values[level] ?? 0
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
          if (this.#root.isLevelEnabled(level) && (this.#root.levels.values[level] as number) >= this.#floor) (this.#real()[level] as LogFn)(...args)
        }
      })
    }
  }
}
