import type { IncomingHttpHeaders } from 'node:http'
import { PassThrough, Readable } from 'node:stream'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import type { AccessToken, TokenSource } from './token/manager.js'
import type { RouteRefusals } from './token/refusals.js'

/** Bodies up to this size are buffered so that a request refused with 401 can be sent again. */
export const REPLAY_LIMIT = 1024 * 1024

/** Where a route's token comes from, and what its 401s have taught it. */
export interface RouteCredential {
  /** The route's name, for logs. */
  readonly route: string
  readonly tokens: TokenSource
  readonly refusals: RouteRefusals
}

type Handler = Dispatcher.DispatchHandler
type Controller = Dispatcher.DispatchController
type Body = Dispatcher.DispatchOptions['body']

/**
 * The one place a token reaches an upstream: an undici interceptor (composed with
 * `dispatcher.compose`, as undici's own `retry` and `redirect` are) that sets
 * `Authorization: Bearer <token>`, keeps a ≤ 1 MiB copy of the request body, and
 * when the route's refusal policy says a 401 was about the token, drains it and
 * sends the request again with a new token. HTTP forwarding and WebSocket
 * upgrades go through it; neither knows about tokens.
 */
export function bearerInterceptor (credential: RouteCredential, log: Logger): Dispatcher.DispatcherComposeInterceptor {
  return (dispatch) => (options, handler) => {
    new BearerRequest(dispatch, options, handler, credential, log).start()
    return true
  }
}

/** The controller the caller holds: it follows each attempt, so a pause or an abort reaches the one in flight. */
class AttemptController implements Controller {
  target: Controller | undefined
  #paused = false
  #reason: Error | undefined

  pause (): void {
    this.#paused = true
    this.target?.pause()
  }

  resume (): void {
    this.#paused = false
    this.target?.resume()
  }

  /** Also between attempts, when no send is in flight: the next one is then not made. */
  abort (reason: Error): void {
    this.#reason = reason
    this.target?.abort(reason)
  }

  get paused (): boolean { return this.#paused || (this.target?.paused ?? false) }
  get aborted (): boolean { return this.#reason !== undefined || (this.target?.aborted ?? false) }
  get reason (): Error | null { return this.#reason ?? this.target?.reason ?? null }
  get rawHeaders (): Controller['rawHeaders'] { return this.target?.rawHeaders }
  get rawTrailers (): Controller['rawTrailers'] { return this.target?.rawTrailers }

  follow (target: Controller): void {
    this.target = target
    if (this.#paused) target.pause()
  }
}

class BearerRequest implements Handler {
  readonly #dispatch: Dispatcher.Dispatch
  readonly #options: Dispatcher.DispatchOptions
  readonly #handler: Handler
  readonly #credential: RouteCredential
  readonly #log: Logger
  readonly #controller = new AttemptController()
  /** The body of the first send; `#replay` is what later sends carry, or `false` when it streamed. */
  #body: Body
  #replay: Body | false = false
  #token: AccessToken | undefined
  #attempt = 0
  #started = false
  /** A 401 about the token is being drained before the request is sent again. */
  #draining = false

  constructor (dispatch: Dispatcher.Dispatch, options: Dispatcher.DispatchOptions, handler: Handler, credential: RouteCredential, log: Logger) {
    this.#dispatch = dispatch
    this.#options = options
    this.#handler = handler
    this.#credential = credential
    this.#log = log
  }

  start (): void {
    const body = this.#options.body
    if (!(body instanceof Readable)) {
      this.#body = body
      this.#replay = body ?? null
      this.#send()
      return
    }
    readReplayable(body, this.#options.headers).then(({ first, replay }) => {
      this.#body = first
      this.#replay = replay
      this.#send()
    }, (error: Error) => this.#fail(error))
  }

  #send (): void {
    const token = this.#credential.tokens.current()
    if (token !== undefined) this.#sendWith(token)
    else this.#credential.tokens.get().then((fresh) => this.#sendWith(fresh), (error: Error) => this.#fail(error))
  }

  #sendWith (token: AccessToken): void {
    if (this.#controller.aborted) {
      this.#fail(this.#controller.reason ?? new Error('aborted'))
      return
    }
    this.#token = token
    if (this.#log.isLevelEnabled('debug')) {
      this.#log.debug({
        event: 'forward',
        route: this.#credential.route,
        upstream: this.#options.origin,
        path: pathOf(this.#options.path),
        obtainedSecondsAgo: Math.round((Date.now() - token.obtainedAt) / 1000),
        attempt: this.#attempt + 1
      }, 'forwarding')
    }
    const headers = this.#options.headers as IncomingHttpHeaders
    headers.authorization = token.authorization
    const body = this.#attempt === 0 ? this.#body : (this.#replay === false ? null : this.#replay)
    try {
      this.#dispatch(body === this.#options.body ? this.#options : { ...this.#options, body }, this)
    } catch (error) {
      this.#fail(error as Error)
    }
  }

  #fail (error: Error): void {
    this.#handler.onResponseError?.(this.#controller, error)
  }

  onRequestStart (controller: Controller, context: unknown): void {
    this.#controller.follow(controller)
    if (this.#started) return
    this.#started = true
    this.#handler.onRequestStart?.(this.#controller, context)
  }

  onRequestUpgrade (_controller: Controller, statusCode: number, headers: IncomingHttpHeaders, socket: import('node:stream').Duplex): void {
    this.#credential.refusals.accepted(this.#token as AccessToken)
    this.#handler.onRequestUpgrade?.(this.#controller, statusCode, headers, socket)
  }

  onResponseStart (controller: Controller, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    const token = this.#token as AccessToken
    if (statusCode !== 401) {
      this.#credential.refusals.accepted(token)
    } else if (this.#credential.refusals.refused(token, this.#attempt) === 'retry' && this.#replay !== false) {
      this.#draining = true
      this.#log.debug({ event: 'upstream_401_retry', path: pathOf(this.#options.path), attempt: this.#attempt + 1 },
        'upstream answered 401: retrying with a new token')
      return
    }
    this.#handler.onResponseStart?.(this.#controller, statusCode, headers, statusMessage)
  }

  onResponseData (_controller: Controller, chunk: Buffer): void {
    if (!this.#draining) this.#handler.onResponseData?.(this.#controller, chunk)
  }

  onResponseEnd (_controller: Controller, trailers: IncomingHttpHeaders): void {
    if (this.#draining) this.#again()
    else this.#handler.onResponseEnd?.(this.#controller, trailers)
  }

  onResponseError (_controller: Controller, error: Error): void {
    // A 401 being drained that breaks off is still a 401 about the token: the request goes again.
    if (this.#draining && !this.#controller.aborted) this.#again()
    else this.#fail(error)
  }

  #again (): void {
    this.#draining = false
    this.#attempt++
    this.#send()
  }
}

/**
 * The request body read up to `REPLAY_LIMIT`: whole (and replayable) when it fits,
 * else the buffered start followed by the rest, streamed, and not replayable.
 */
async function readReplayable (payload: Readable, headers: Dispatcher.DispatchOptions['headers']): Promise<{ first: Body, replay: Body | false }> {
  const declared = Number((headers as IncomingHttpHeaders | undefined)?.['content-length'])
  if (declared > REPLAY_LIMIT) return { first: payload, replay: false }
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
    return { first: buffer, replay: buffer }
  }
  const rest = new PassThrough()
  for (const chunk of chunks) rest.write(chunk)
  payload.pipe(rest)
  payload.once('error', (error) => rest.destroy(error))
  return { first: rest, replay: false }
}

function pathOf (target: string): string {
  const query = target.indexOf('?')
  return query === -1 ? target : target.slice(0, query)
}
