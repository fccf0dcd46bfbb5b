import { type DestinationStream, pino, type Logger } from 'pino'

const SECRET_FIELDS = [
  'authorization', 'proxy-authorization', 'cookie', 'set-cookie',
  'password', 'secret', 'token', 'client_secret', 'clientSecret', 'api_key', 'apiKey',
  'access_token', 'accessToken', 'refresh_token', 'refreshToken', 'id_token', 'idToken', 'inboundKey'
]

/** Second line of defence (the first: secrets are `Secret` values that print `[redacted]`). */
export const REDACT_PATHS = [
  ...SECRET_FIELDS.map((field) => `["${field}"]`),
  ...SECRET_FIELDS.map((field) => `*["${field}"]`),
  ...SECRET_FIELDS.map((field) => `*.headers["${field}"]`)
]

/** pino JSON lines on stdout (`fd` 1), or stderr (2) for commands whose stdout is their answer. */
export function createLogger (level: string, fd: 1 | 2 | DestinationStream = 1): Logger {
  return pino({
    level,
    base: { name: 'bearer-proxy' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime
  }, typeof fd === 'number' ? pino.destination({ fd, sync: fd === 2 }) : fd)
}
