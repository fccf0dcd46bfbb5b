import { type IncomingMessage, type Server, STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Logger } from 'pino'
import { ProxyError, rawErrorResponse } from './errors.js'
import type { Resolved } from './routes.js'
import type { Handshake, Tracing } from './tracing.js'
import { DROPPED_RESPONSE_HEADERS, dropRequestHeaders, type ServedRoute, upstreamError, warnFailure } from './proxy.js'

export interface TunnelOptions {
  /** The guard's verdict on an upgrade, then its route: by the configuration serving now. */
  readonly resolve: (request: IncomingMessage) => Target | ProxyError | typeof CLOSED
  readonly log: Logger
  /** Seconds to wait for the upstream's answer to the upgrade. */
  readonly timeout: number
  /** Traces, when on: a server span per upgrade, ended with its answer. */
  readonly tracing: Tracing | undefined
}

export type Target = Resolved<ServedRoute>

/** An upgrade that is not answered at all: it came behind a refusal on its connection. */
export const CLOSED = Symbol('closed')

function statusLine (status: number): string {
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n`
}

function refuse (socket: Duplex, error: ProxyError): void {
  socket.end(rawErrorResponse(error))
}

const DROPPED_RESPONSE: ReadonlySet<string> = new Set(DROPPED_RESPONSE_HEADERS)
const NOTHING: ReadonlySet<string> = new Set()

/** Response headers, as the upstream sent them, as lines: without the ones in `drop` (hop-by-hop ones, for a non-101 answer). */
function headerLines (rawHeaders: ReadonlyArray<Buffer | string> | null, drop: ReadonlySet<string>): string {
  let lines = ''
  for (let i = 0; rawHeaders !== null && i + 1 < rawHeaders.length; i += 2) {
    const name = String(rawHeaders[i])
    if (!drop.has(name.toLowerCase())) lines += `${name}: ${String(rawHeaders[i + 1])}\r\n`
  }
  return lines
}

/**
 * WebSocket upgrades as a raw tunnel: checked by the same guard, sent to the
 * upstream with the token added through the shared dispatcher, and either
 * switched (both sockets piped, either closing closes the other) or answered
 * exactly as the upstream answered.
 */
export function websocketTunnel (server: Server, options: TunnelOptions): { closeAll: () => void } {
  // Upgraded sockets are no longer the HTTP server's to close: tracked here, so that shutdown ends them.
  const open = new Set<Duplex>()
  server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    open.add(socket)
    socket.once('close', () => open.delete(socket))
    socket.on('error', () => socket.destroy())
    const target = options.resolve(request)
    if (target === CLOSED) return socket.destroy()
    const span = options.tracing?.upgrade(request)
    if (target instanceof ProxyError) {
      span?.end(target.status, undefined, target.code)
      return refuse(socket, target)
    }
    tunnel(request, socket, head, target, span)
  })

  /** The upgrade sent through the route's dispatcher, which adds the token (and retries a 401 about it). */
  function tunnel (request: IncomingMessage, socket: Duplex, head: Buffer, target: Target, span: Handshake | undefined): void {
    // The same header policy as HTTP requests; undici sets its own `host` and `upgrade`.
    const headers: Record<string, string | string[] | undefined> = { ...request.headers }
    dropRequestHeaders(headers)
    delete headers.host
    const path = target.path.split('?')[0] as string
    let answered = false
    const log = (status: number): void => {
      span?.end(status, target.route.name, undefined)
      options.log.info({ event: 'websocket', path, upstream: target.route.name, status }, 'websocket')
    }
    target.route.dispatcher.dispatch({
      origin: target.route.upstream.origin,
      path: target.path,
      method: 'GET',
      headers,
      upgrade: 'websocket',
      headersTimeout: options.timeout * 1000
    }, {
      // The handler of undici's request API, which the route's dispatcher takes (src/bearer.ts).
      onConnect (abort: (reason?: Error) => void) {
        socket.once('close', () => { if (!answered) abort(new Error('client went away')) })
      },
      onHeaders (status: number, rawHeaders: Buffer[]) {
        if (status < 200) return true
        // Refused: answered as the upstream answered.
        answered = true
        socket.write(`${statusLine(status)}${headerLines(rawHeaders, DROPPED_RESPONSE)}connection: close\r\n\r\n`)
        log(status)
        return true
      },
      onData (chunk: Buffer) {
        socket.write(chunk)
        return true
      },
      onComplete () {
        socket.end()
      },
      onUpgrade (status: number, rawHeaders: Buffer[] | string[] | null, upstream: Duplex) {
        answered = true
        socket.write(`${statusLine(status)}${headerLines(rawHeaders, NOTHING)}\r\n`)
        if (head.length > 0) upstream.write(head)
        upstream.pipe(socket).pipe(upstream)
        upstream.on('error', () => socket.destroy())
        upstream.on('close', () => socket.destroy())
        socket.on('close', () => upstream.destroy())
        log(status)
      },
      onError (error: Error) {
        if (answered) {
          socket.destroy()
          return
        }
        const failure = upstreamError(target.route, error, options.timeout)
        span?.end(failure.status, target.route.name, failure.code)
        warnFailure(options.log, target.route, failure)
        refuse(socket, failure)
      }
    })
  }

  return {
    closeAll: () => {
      for (const socket of open) socket.destroy()
    }
  }
}
