import { PassThrough, Readable } from 'node:stream'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import type { AccessToken, TokenSource } from './token/manager.js'
import type { RouteRefusals } from './token/refusals.js'

/** Bodies up to this size are buffered so that a request rejected with 401 can be sent again. */
export const REPLAY_LIMIT = 1024 * 1024

const kReplay = Symbol('replay')
type ReplayableStream = Readable & { [kReplay]?: Buffer }

type RequestOptions = Dispatcher.RequestOptions & { headers: Record<string, string | string[] | undefined> }
type Callback = (error: Error | null, data?: Dispatcher.ResponseData) => void

/**
 * The request body as a stream for reply-from: fully buffered (and replayable) when it
 * fits in `REPLAY_LIMIT`, else the buffered start followed by the rest, streamed.
 */
export async function readBody (payload: Readable, contentLength: string | undefined): Promise<Readable> {
  if (contentLength !== undefined && Number(contentLength) > REPLAY_LIMIT) return payload
  const chunks: Buffer[] = []
  const ended = await new Promise<boolean>((resolve, reject) => {
    let size = 0
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk)
      size += chunk.length
      if (size > REPLAY_LIMIT) {
        payload.pause()
        done(false)
      }
    }
    const onEnd = (): void => done(true)
    const onError = (error: Error): void => { cleanup(); reject(error) }
    const cleanup = (): void => {
      payload.off('data', onData).off('end', onEnd).off('error', onError)
    }
    const done = (value: boolean): void => { cleanup(); resolve(value) }
    payload.on('data', onData).on('end', onEnd).on('error', onError)
  })
  if (ended) {
    const buffer = Buffer.concat(chunks)
    const stream: ReplayableStream = Readable.from([buffer])
    stream[kReplay] = buffer
    return stream
  }
  const rest = new PassThrough()
  for (const chunk of chunks) rest.write(chunk)
  payload.pipe(rest)
  payload.once('error', (error) => rest.destroy(error))
  return rest
}

/** The body to send again after a 401, or `false` when it streamed and cannot be replayed. */
function replayBody (body: unknown): unknown {
  if (body === undefined || body === null || body === '') return body
  const buffer = (body as ReplayableStream)[kReplay]
  return buffer === undefined ? false : Readable.from([buffer])
}

/**
 * A dispatcher for reply-from, one per route, that adds `Authorization: Bearer <token>`
 * to every upstream request and, when the route's refusal policy says a 401 was about
 * the token, sends the request again with a new one if its body can be replayed.
 */
export class AuthorizingDispatcher {
  readonly #inner: Dispatcher
  readonly #tokens: TokenSource
  readonly #refusals: RouteRefusals
  readonly #log: Logger

  constructor (inner: Dispatcher, tokens: TokenSource, refusals: RouteRefusals, log: Logger) {
    this.#inner = inner
    this.#tokens = tokens
    this.#refusals = refusals
    this.#log = log
  }

  request (options: RequestOptions, callback: Callback): void {
    // Common case: a valid token is held and no promise is made.
    const token = this.#tokens.current()
    if (token !== undefined) {
      this.#send(options, options.body, token, 0, callback)
      return
    }
    this.#tokens.get().then((fresh) => this.#send(options, options.body, fresh, 0, callback), callback)
  }

  #send (options: RequestOptions, original: unknown, token: AccessToken, attempt: number, callback: Callback): void {
    options.headers.authorization = token.authorization
    this.#inner.request(options, (error, response) => {
      if (error !== null) {
        callback(error, response)
        return
      }
      if (response.statusCode !== 401) {
        this.#refusals.accepted(token)
        callback(null, response)
        return
      }
      const body = this.#refusals.refused(token, attempt) === 'retry' ? replayBody(original) : false
      if (body === false) {
        callback(null, response)
        return
      }
      response.body.dump().catch(() => {})
      this.#log.debug({ event: 'upstream_401_retry', path: pathOf(options.path), attempt: attempt + 1 }, 'upstream answered 401: retrying with a new token')
      this.#tokens.get().then((fresh) => {
        this.#send({ ...options, body: body as RequestOptions['body'] }, original, fresh, attempt + 1, callback)
      }, callback)
    })
  }
}

function pathOf (target: string): string {
  const query = target.indexOf('?')
  return query === -1 ? target : target.slice(0, query)
}
