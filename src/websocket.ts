import { type IncomingMessage, type Server, STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import { ProxyError, rawErrorResponse } from './errors.js'
import type { Guard } from './guard.js'
import { DROPPED_RESPONSE_HEADERS, dropRequestHeaders, type ServedRoute, upstreamError } from './proxy.js'
import type { AccessToken, TokenSource } from './token/manager.js'

export interface TunnelOptions {
  readonly routes: readonly ServedRoute[]
  readonly tokens: TokenSource
  readonly dispatcher: Dispatcher
  readonly guard: Guard
  readonly log: Logger
  /** Seconds to wait for the upstream's answer to the upgrade. */
  readonly timeout: number
}

const DROPPED_RESPONSE = new Set(DROPPED_RESPONSE_HEADERS)

interface Target { readonly route: ServedRoute, readonly path: string }

function statusLine (status: number): string {
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n`
}

function refuse (socket: Duplex, error: ProxyError): void {
  socket.end(rawErrorResponse(error))
}

/** `[name, value, …]` raw headers as lines, without hop-by-hop ones (for a non-101 answer). */
function headerLines (raw: Buffer[], drop: ReadonlySet<string>): string {
  let lines = ''
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]?.toString('latin1') ?? ''
    if (!drop.has(name.toLowerCase())) lines += `${name}: ${raw[i + 1]?.toString('latin1') ?? ''}\r\n`
  }
  return lines
}

/**
 * WebSocket upgrades as a raw tunnel: checked by the same guard, sent to the
 * upstream with the token added through the shared dispatcher, and either
 * switched (both sockets piped, either closing closes the other) or answered
 * exactly as the upstream answered.
 */
export function websocketTunnel (server: Server, options: TunnelOptions): void {
  const clusters = new Map(options.routes.filter((route) => route.prefix !== '/').map((route) => [route.name, route]))
  const admin = options.routes.find((route) => route.prefix === '/')

  const resolve = (url: string): Target | ProxyError => {
    let route = admin
    let rest = url
    if (url.startsWith('/clusters/')) {
      const end = url.slice(10).search(/[/?]/)
      const name = end === -1 ? url.slice(10) : url.slice(10, 10 + end)
      route = clusters.get(name)
      if (route === undefined) return new ProxyError('unknown_cluster', `no cluster named ${JSON.stringify(name.slice(0, 64))} is configured`)
      rest = end === -1 ? '/' : url.slice(10 + end)
      if (rest.startsWith('?')) rest = `/${rest}`
    }
    if (route === undefined || url.startsWith('/-/')) return new ProxyError('not_found', 'nothing is served at this path')
    return { route, path: route.upstream.pathname.replace(/\/+$/, '') + rest }
  }

  server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => socket.destroy())
    const url = request.url ?? ''
    const verdict = options.guard(request)
    if (verdict instanceof ProxyError) return refuse(socket, verdict)
    const target = resolve(url)
    if (target instanceof ProxyError) return refuse(socket, target)
    const current = options.tokens.current()
    if (current !== undefined) return open(request, socket, head, target, current)
    options.tokens.get().then((token) => open(request, socket, head, target, token), (error: unknown) => {
      refuse(socket, error instanceof ProxyError ? error : new ProxyError('token_unavailable', 'no token'))
    })
  })

  function open (request: IncomingMessage, socket: Duplex, head: Buffer, target: Target, token: AccessToken, attempt = 0): void {
    if (socket.destroyed) return
    // The same header policy as HTTP requests; undici sets its own `host` and `upgrade`.
    const headers: Record<string, string | string[] | undefined> = { ...request.headers }
    dropRequestHeaders(headers)
    delete headers.host
    headers.authorization = token.authorization
    const path = target.path.split('?')[0] as string
    // waiting for the upstream; answered (its answer is being relayed); retry (a 401 about the token, being drained)
    let phase: 'waiting' | 'answered' | 'retry' = 'waiting'
    const log = (status: number): void => {
      options.log.info({ event: 'websocket', path, upstream: target.route.name, status }, 'websocket')
    }
    const retry = (): void => {
      options.tokens.get().then((fresh) => open(request, socket, head, target, fresh, attempt + 1), (error: unknown) => {
        refuse(socket, error instanceof ProxyError ? error : new ProxyError('token_unavailable', 'no token'))
      })
    }
    options.dispatcher.dispatch({
      origin: target.route.upstream.origin,
      path: target.path,
      method: 'GET',
      headers,
      upgrade: 'websocket',
      headersTimeout: options.timeout * 1000
    }, {
      onConnect (abort: (error?: Error) => void) {
        socket.once('close', () => { if (phase === 'waiting') abort(new Error('client went away')) })
      },
      onHeaders (status: number, raw: Buffer[]) {
        // An upgrade has no body: a 401 about the token is retried like any replayable request.
        if (status === 401 && target.route.refusals.refused(token, attempt) === 'retry') {
          phase = 'retry'
          return true
        }
        if (status !== 401) target.route.refusals.accepted(token)
        // Refused: answered as the upstream answered.
        phase = 'answered'
        socket.write(`${statusLine(status)}${headerLines(raw, DROPPED_RESPONSE)}connection: close\r\n\r\n`)
        log(status)
        return true
      },
      onData (chunk: Buffer) {
        return phase === 'retry' || socket.write(chunk)
      },
      onComplete () {
        if (phase === 'retry') retry()
        else socket.end()
      },
      onUpgrade (status: number, raw: Buffer[], upstream: Duplex) {
        phase = 'answered'
        target.route.refusals.accepted(token)
        socket.write(`${statusLine(status)}${headerLines(raw, new Set())}\r\n`)
        if (head.length > 0) upstream.write(head)
        upstream.pipe(socket).pipe(upstream)
        upstream.on('error', () => socket.destroy())
        upstream.on('close', () => socket.destroy())
        socket.on('close', () => upstream.destroy())
        log(status)
      },
      onError (error: Error) {
        if (phase === 'retry') retry()
        else if (phase === 'answered') socket.destroy()
        else refuse(socket, upstreamError(target.route, error, options.timeout))
      }
    } as unknown as Dispatcher.DispatchHandler)
  }
}
