import type { IncomingHttpHeaders } from 'node:http'
import { type Duplex, PassThrough, Readable } from 'node:stream'
import type { Logger } from 'pino'
import { Dispatcher } from 'undici'
import type { AccessToken, TokenSource } from './token/access-token.js'
import type { RouteRefusals } from './token/refusals.js'
import type { Attempt, Tracing } from './tracing.js'

/** Bodies up to this size are buffered so that a request refused with 401 can be sent again. */
export const REPLAY_LIMIT = 1024 * 1024

/** Where a route's token comes from, and what its 401s have taught it. */
export interface RouteCredential {
  /** The route's name, for logs. */
  readonly route: string
  readonly tokens: TokenSource
  readonly refusals: RouteRefusals
  /** Traces, when on: a client span per attempt. */
  readonly tracing: Tracing | undefined
}

type Body = Dispatcher.DispatchOptions['body']

/**
 * The handler of undici's `request()`, `stream()` and `pipeline()` (reply-from
 * forwards with `request()`): raw header buffers, called as the connection parses.
 */
interface RequestHandler {
  onConnect?: (abort: (reason?: Error) => void, context?: object) => void
  onHeaders?: (statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string) => boolean
  onData?: (chunk: Buffer) => boolean
  onComplete?: (trailers: Buffer[] | null) => void
  onError?: (error: Error) => void
  onUpgrade?: (statusCode: number, rawHeaders: Buffer[] | string[] | null, socket: Duplex) => void
}

/**
 * The one place a token reaches an upstream: a route's dispatcher. It sets
 * `Authorization: Bearer <token>`, keeps a ≤ 1 MiB copy of the request body, and
 * when the route's refusal policy says a 401 was about the token, drains it and
 * sends the request again with a new token, through the shared agent. HTTP
 * forwarding (reply-from) and WebSocket upgrades go through it; neither knows
 * about tokens.
 *
 * It hands the handler `request()` made to the agent's connection as it is, so
 * that response headers reach reply-from as the connection parsed them, parsed
 * once (an interceptor parsed them twice: README, "Benchmark").
 */
export class BearerDispatcher extends Dispatcher {
  readonly #agent: Dispatcher
  readonly #credential: RouteCredential
  readonly #log: Logger

  constructor (agent: Dispatcher, credential: RouteCredential, log: Logger) {
    super()
    this.#agent = agent
    this.#credential = credential
    this.#log = log
  }

  override dispatch (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    if (typeof (handler as RequestHandler).onHeaders !== 'function') {
      throw new TypeError('BearerDispatcher takes the handlers of undici\'s request(), stream() and pipeline() (onConnect, onHeaders, …)')
    }
    new BearerRequest(this.#agent, options, handler as RequestHandler, this.#credential, this.#log).start()
    return true
  }

  /** The agent is shared by every route, and closed by its owner. */
  override async close (): Promise<void> {}
  override async destroy (): Promise<void> {}
}

class BearerRequest implements RequestHandler {
  readonly #agent: Dispatcher
  readonly #options: Dispatcher.DispatchOptions
  readonly #handler: RequestHandler
  readonly #credential: RouteCredential
  readonly #log: Logger
  /** The body of the first send; `#replay` is what later sends carry, or `false` when it streamed. */
  #body: Body
  #replay: Body | false = false
  #token: AccessToken | undefined
  #attempt = 0
  /** Aborts the send in flight. */
  #abort: ((reason?: Error) => void) | undefined
  /** Why the caller aborted, also between sends: the next one is then not made. */
  #aborted: Error | undefined
  #connected = false
  /** A 401 about the token is being drained before the request is sent again. */
  #draining = false
  /** A DPoP-bound token's request was retried once with the upstream's new nonce. */
  #nonceRetried = false
  #nonceRetrying = false
  /** The span of the send in flight, when traces are on, and the status it was answered with. */
  #span: Attempt | undefined
  #status = 0
  #sends = 0
  /** The server span's `traceparent`, which each attempt's span is a child of (the headers then name the attempt's). */
  #parent: string | undefined

  constructor (agent: Dispatcher, options: Dispatcher.DispatchOptions, handler: RequestHandler, credential: RouteCredential, log: Logger) {
    this.#agent = agent
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
    if (token !== undefined) {
      this.#sendWith(token)
      return
    }
    // A token request this request starts is a child of its server span, when traces are on.
    this.#credential.tokens.get(this.#credential.tracing === undefined ? undefined : this.#serverSpan()).then((fresh) => this.#sendWith(fresh), (error: Error) => this.#fail(error))
  }

  #sendWith (token: AccessToken): void {
    if (this.#aborted !== undefined) {
      this.#fail(this.#aborted)
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
    // RFC 9449 §7: a fresh proof for this method and upstream URL (no query), bound to the token by its hash.
    if (token.dpop !== undefined) headers.dpop = token.dpop.signer.proof(this.#options.method, `${originString(this.#options.origin)}${pathOf(this.#options.path)}`, token.dpop.ath)
    const body = this.#attempt === 0 ? this.#body : (this.#replay === false ? null : this.#replay)
    const { tracing } = this.#credential
    if (tracing !== undefined) {
      const parent = this.#serverSpan()
      if (parent !== undefined) headers.traceparent = parent
      this.#span = tracing.attempt(headers as Record<string, unknown>, this.#options.method, originString(this.#options.origin), pathOf(this.#options.path), this.#credential.route, this.#sends++)
    }
    try {
      this.#agent.dispatch(body === this.#options.body ? this.#options : { ...this.#options, body }, this as Dispatcher.DispatchHandler)
    } catch (error) {
      this.#fail(error as Error)
    }
  }

  /** The `traceparent` the request came with from the listener (its server span's), kept before an attempt replaces it. */
  #serverSpan (): string | undefined {
    if (this.#sends === 0) {
      const { traceparent } = this.#options.headers as IncomingHttpHeaders
      this.#parent = typeof traceparent === 'string' ? traceparent : undefined
    }
    return this.#parent
  }

  #fail (error: Error): void {
    this.#span?.end(error)
    this.#handler.onError?.(error)
  }

  onConnect (abort: (reason?: Error) => void, context?: object): void {
    this.#abort = abort
    if (this.#aborted !== undefined) {
      abort(this.#aborted)
      return
    }
    if (this.#connected) return
    this.#connected = true
    this.#handler.onConnect?.((reason) => {
      this.#aborted = reason ?? new Error('aborted')
      this.#abort?.(this.#aborted)
    }, context)
  }

  onUpgrade (statusCode: number, rawHeaders: Buffer[] | string[] | null, socket: Duplex): void {
    this.#span?.end(statusCode)
    this.#credential.refusals.accepted(this.#token as AccessToken)
    this.#handler.onUpgrade?.(statusCode, rawHeaders, socket)
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    // Informational (1xx): the final answer follows.
    if (statusCode >= 200) {
      this.#status = statusCode
      const token = this.#token as AccessToken
      if (token.dpop !== undefined && this.#nonceChallenge(token, statusCode, rawHeaders)) return true
      if (statusCode !== 401) {
        this.#credential.refusals.accepted(token)
      } else if (this.#credential.refusals.refused(token, this.#attempt) === 'retry' && this.#replay !== false) {
        this.#draining = true
        this.#log.debug({ event: 'upstream_401_retry', path: pathOf(this.#options.path), attempt: this.#attempt + 1 },
          'upstream answered 401: retrying with a new token')
        return true
      }
    }
    return this.#handler.onHeaders?.(statusCode, rawHeaders, resume, statusText) ?? true
  }

  /**
   * A DPoP upstream's nonce (RFC 9449 §9), kept for its origin; a 401 that asks for
   * it (`use_dpop_nonce`) is retried once with it, a new proof, before the refusal
   * policy hears of it. True when the answer is being drained for that retry.
   */
  #nonceChallenge (token: AccessToken, statusCode: number, rawHeaders: Buffer[]): boolean {
    let nonce: string | undefined
    let challenge = false
    for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
      const name = (rawHeaders[i] as Buffer).toString('latin1').toLowerCase()
      if (name === 'dpop-nonce') nonce = (rawHeaders[i + 1] as Buffer).toString('latin1')
      else if (name === 'www-authenticate' && statusCode === 401) challenge ||= /use_dpop_nonce/.test((rawHeaders[i + 1] as Buffer).toString('latin1'))
    }
    if (nonce === undefined) return false
    token.dpop?.signer.nonce(originString(this.#options.origin), nonce)
    if (!challenge || this.#nonceRetried || this.#replay === false) return false
    this.#nonceRetried = true
    this.#nonceRetrying = true
    this.#draining = true
    this.#log.debug({ event: 'upstream_dpop_nonce_retry', path: pathOf(this.#options.path) }, 'upstream asked for its DPoP nonce: retrying with it')
    return true
  }

  onData (chunk: Buffer): boolean {
    return this.#draining || (this.#handler.onData?.(chunk) ?? true)
  }

  onComplete (trailers: Buffer[] | null): void {
    if (this.#draining) {
      this.#again()
      return
    }
    this.#span?.end(this.#status)
    this.#handler.onComplete?.(trailers)
  }

  onError (error: Error): void {
    // A 401 being drained that breaks off is still a 401 about the token: the request goes again.
    if (this.#draining && this.#aborted === undefined) this.#again()
    else this.#fail(error)
  }

  #again (): void {
    this.#span?.end(this.#status, this.#nonceRetrying ? 'use_dpop_nonce' : 'token_rejected')
    this.#draining = false
    // A retry with the upstream's DPoP nonce is the same attempt, as the refusal policy counts them.
    if (!this.#nonceRetrying) this.#attempt++
    this.#nonceRetrying = false
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

function originString (origin: Dispatcher.DispatchOptions['origin']): string {
  return typeof origin === 'string' ? origin : (origin as URL).origin
}

function pathOf (target: string): string {
  const query = target.indexOf('?')
  return query === -1 ? target : target.slice(0, query)
}
