import type { IncomingMessage, ServerResponse } from 'node:http'
import { type Attributes, type Context, isSpanContextValid, ROOT_CONTEXT, type Span, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api'
import { parseTraceParent, setGlobalErrorHandler, TraceState } from '@opentelemetry/core'
import { OTLPTraceExporter as JsonExporter } from '@opentelemetry/exporter-trace-otlp-http'
import { OTLPTraceExporter as ProtobufExporter } from '@opentelemetry/exporter-trace-otlp-proto'
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources'
import { AlwaysOffSampler, AlwaysOnSampler, BatchSpanProcessor, ParentBasedSampler, type Sampler, TraceIdRatioBasedSampler, TracerProvider } from '@opentelemetry/sdk-trace'

/**
 * The tracer `tracing.ts` describes, made with the OpenTelemetry SDK: spans batched
 * and sent to an OTLP/HTTP collector. Bundled apart (dist/otel.js) and loaded only
 * when tracing is asked for; it imports nothing of src/, so the bundle holds no copy
 * of the proxy's code. The types are `tracing.ts`'s, restated (an import of them would
 * make a cycle of the two files).
 */

type SpanAttributes = Record<string, string | number | boolean>
interface Settings {
  readonly endpoint: URL
  readonly protocol: 'http/protobuf' | 'http/json'
  readonly sampler: string
  readonly ratio: number
  readonly batch: { readonly scheduledDelayMillis?: number, readonly maxQueueSize?: number, readonly maxExportBatchSize?: number, readonly exportTimeoutMillis?: number }
}
interface Outcome<T> {
  readonly succeeded: (result: T) => SpanAttributes
  readonly failed: (error: unknown) => { readonly message: string, readonly type: string }
}

/** Methods named as they are; any other is `_OTHER`, as the semantic conventions say (a client's method names no span). */
const METHODS = new Set(['CONNECT', 'DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT', 'TRACE'])
const methodOf = (method: string | undefined): string => method !== undefined && METHODS.has(method) ? method : '_OTHER'
/** No attribute longer: a path is the longest the proxy records. */
const VALUE_LIMIT = 1024
const EXPORT_FAILURE_EVERY_MS = 60_000

interface ServerSpan { readonly span: Span, readonly method: string, proxyError: string | undefined }

/**
 * W3C Trace Context, read and written here rather than by the SDK's propagator: the
 * same rules (a malformed `traceparent`, an all-zero id or a version `00` with more
 * fields starts a new trace; its `tracestate` goes with it) without the contexts the
 * propagator allocates on the way, which at every request cost the young generation
 * more than the parsing does.
 */
function parentOf (carrier: Record<string, unknown>): Context {
  const header = carrier.traceparent
  if (typeof header !== 'string') return ROOT_CONTEXT
  const parsed = parseTraceParent(header.trim())
  if (parsed === null || !isSpanContextValid(parsed)) return ROOT_CONTEXT
  const state = carrier.tracestate
  const traceState = typeof state === 'string' ? new TraceState(state) : Array.isArray(state) ? new TraceState(state.join(',')) : undefined
  return trace.setSpanContext(ROOT_CONTEXT, { ...parsed, isRemote: true, ...(traceState === undefined ? {} : { traceState }) })
}

const SERVER_SPAN = { kind: SpanKind.SERVER }
const CLIENT_SPAN = { kind: SpanKind.CLIENT }
/** The end of an attempt whose span is not sampled: nothing to record. */
const UNSAMPLED = { end: () => {} }

const FLAGS = Array.from({ length: 256 }, (_, flags) => flags.toString(16).padStart(2, '0'))

/** `carrier`'s `traceparent` (and `tracestate`) now name `span`: what the next hop takes as its parent. */
function pass (span: Span, carrier: Record<string, unknown>): void {
  const { traceId, spanId, traceFlags, traceState } = span.spanContext()
  carrier.traceparent = `00-${traceId}-${spanId}-${FLAGS[traceFlags & 0xff] as string}`
  const state = traceState?.serialize()
  if (state !== undefined && state !== '') carrier.tracestate = state
  // Deleted only when there is one: a delete turns the headers object into a slow dictionary.
  else if (carrier.tracestate !== undefined) delete carrier.tracestate
}

function samplerOf (name: string, ratio: number): Sampler {
  const root = name.endsWith('always_off') ? new AlwaysOffSampler() : name.endsWith('traceidratio') ? new TraceIdRatioBasedSampler(ratio) : new AlwaysOnSampler()
  return name.startsWith('parentbased_') ? new ParentBasedSampler({ root }) : root
}

export function createTracing (settings: Settings, version: string, exportFailed: (message: string) => void): {
  serve: (request: IncomingMessage, response: ServerResponse) => void
  upgrade: (request: IncomingMessage) => { end: (status: number, route: string | undefined, proxyError: string | undefined) => void }
  routed: (request: IncomingMessage, pattern: string | undefined, route: string | undefined, proxyError: string | undefined) => void
  ids: (request: IncomingMessage) => { traceId: string, spanId: string } | undefined
  attempt: (headers: Record<string, unknown>, method: string, origin: string, path: string, route: string, resend: number) => { end: (answer: number | Error, retry?: string) => void }
  operation: <T>(name: string, parent: string | undefined, attributes: SpanAttributes, work: (traceparent: string | undefined) => Promise<T>, outcome: Outcome<T>) => Promise<T>
  close: (timeoutMs: number) => Promise<void>
} {
  // What failed to export is said once a minute at most, in its own words, cut short (never a header the exporter sent).
  let saidAt = -Infinity
  setGlobalErrorHandler((error) => {
    const now = Date.now()
    if (now - saidAt < EXPORT_FAILURE_EVERY_MS) return
    saidAt = now
    // The collector's status, when it answered (OTLPExporterError's `code`).
    const status = typeof (error as { code?: unknown }).code === 'number' ? ` (HTTP ${String((error as { code: number }).code)})` : ''
    const message = error instanceof Error ? error.message : String(error)
    exportFailed(`${message.replace(/\s+/g, ' ').slice(0, 200)}${status}`)
  })
  const Exporter = settings.protocol === 'http/json' ? JsonExporter : ProtobufExporter
  const provider = new TracerProvider({
    resource: defaultResource()
      .merge(resourceFromAttributes({ 'service.name': 'bearer-proxy', 'service.version': version }))
      .merge(detectResources({ detectors: [envDetector] })),
    sampler: samplerOf(settings.sampler, settings.ratio),
    spanLimits: { attributeValueLengthLimit: VALUE_LIMIT },
    spanProcessors: [new BatchSpanProcessor({ ...settings.batch, exporter: new Exporter({ url: settings.endpoint.href }) })]
  })
  const tracer = provider.getTracer('bearer-proxy', version)
  /** An upstream's address and port, worked out once per origin (there are as many as routes and clusters). */
  const targets = new Map<string, { readonly origin: string, readonly address: string, readonly port: number }>()
  const targetOf = (origin: string): { readonly origin: string, readonly address: string, readonly port: number } => {
    let target = targets.get(origin)
    if (target === undefined) {
      const url = new URL(origin)
      target = { origin: url.origin, address: url.hostname, port: Number(url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : url.port) }
      if (targets.size < 10_000) targets.set(origin, target)
    }
    return target
  }

  const endServer = (traced: ServerSpan, response: ServerResponse): void => {
    const { span, proxyError } = traced
    const status = response.statusCode
    const attributes: Attributes = { 'http.response.status_code': status }
    if (proxyError !== undefined) attributes['bearer_proxy.error'] = proxyError
    if (!response.writableFinished) {
      // The client went away before the whole answer was sent.
      attributes['error.type'] = 'aborted'
      span.setStatus({ code: SpanStatusCode.ERROR, message: 'the connection closed before the response was sent' })
    } else if (status >= 500) {
      attributes['error.type'] = proxyError ?? String(status)
      span.setStatus({ code: SpanStatusCode.ERROR })
    }
    span.setAttributes(attributes)
    span.end()
  }

  /** A request's server span, continuing the client's trace; the request's headers then name it as the parent. */
  const startServer = (request: IncomingMessage): ServerSpan => {
    const method = methodOf(request.method)
    const url = request.url ?? ''
    const query = url.indexOf('?')
    const span = tracer.startSpan(method, SERVER_SPAN, parentOf(request.headers))
    pass(span, request.headers)
    // A span not sampled is passed on, and nothing else: no attribute is built for it.
    if (span.isRecording()) {
      span.setAttributes({
        'http.request.method': method,
        'url.path': query === -1 ? url : url.slice(0, query),
        'url.scheme': 'http',
        'network.protocol.version': request.httpVersion
      })
    }
    return { span, method, proxyError: undefined }
  }

  /** Each request's server span, beside the request rather than on it: a property added to node's request would change its shape. */
  const servers = new WeakMap<IncomingMessage, ServerSpan>()

  return {
    serve: (request, response) => {
      const traced = startServer(request)
      servers.set(request, traced)
      if (traced.span.isRecording()) response.once('close', () => endServer(traced, response))
    },
    upgrade: (request) => {
      const { span } = startServer(request)
      let ended = false
      return {
        end: (status, route, proxyError) => {
          if (ended) return
          ended = true
          const attributes: Attributes = { 'http.response.status_code': status }
          if (route !== undefined) attributes['bearer_proxy.route'] = route
          if (proxyError !== undefined) attributes['bearer_proxy.error'] = proxyError
          if (status >= 500) {
            attributes['error.type'] = proxyError ?? String(status)
            span.setStatus({ code: SpanStatusCode.ERROR })
          }
          span.setAttributes(attributes)
          span.end()
        }
      }
    },
    routed: (request, pattern, route, proxyError) => {
      const traced = servers.get(request)
      if (traced === undefined || !traced.span.isRecording()) return
      traced.proxyError = proxyError
      if (route !== undefined) traced.span.setAttribute('bearer_proxy.route', route)
      if (pattern === undefined) return
      traced.span.setAttribute('http.route', pattern)
      traced.span.updateName(`${traced.method} ${pattern}`)
    },
    ids: (request) => {
      const traced = servers.get(request)
      if (traced === undefined) return undefined
      const { traceId, spanId } = traced.span.spanContext()
      return { traceId, spanId }
    },
    attempt: (headers, method, origin, path, route, resend) => {
      const span = tracer.startSpan(methodOf(method), CLIENT_SPAN, parentOf(headers))
      pass(span, headers)
      if (!span.isRecording()) return UNSAMPLED
      const target = targetOf(origin)
      const attributes: Attributes = {
        'http.request.method': methodOf(method),
        'server.address': target.address,
        'server.port': target.port,
        'url.full': `${target.origin}${path}`,
        'bearer_proxy.route': route
      }
      if (resend > 0) attributes['http.request.resend_count'] = resend
      span.setAttributes(attributes)
      let ended = false
      return {
        end: (answer, retry) => {
          if (ended) return
          ended = true
          if (typeof answer === 'number') {
            span.setAttribute('http.response.status_code', answer)
            if (answer >= 400) {
              span.setAttribute('error.type', String(answer))
              span.setStatus({ code: SpanStatusCode.ERROR })
            }
          } else {
            // The kind of failure (undici's code), never its message.
            span.setAttribute('error.type', (answer as NodeJS.ErrnoException).code ?? answer.name)
            span.setStatus({ code: SpanStatusCode.ERROR })
          }
          if (retry !== undefined) span.setAttribute('bearer_proxy.retry', retry)
          span.end()
        }
      }
    },
    operation: async (name, parent, attributes, work, outcome) => {
      const span = tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes }, parent === undefined ? ROOT_CONTEXT : parentOf({ traceparent: parent }))
      const carrier: Record<string, unknown> = {}
      pass(span, carrier)
      try {
        const result = await work(carrier.traceparent as string | undefined)
        span.setAttributes(outcome.succeeded(result))
        return result
      } catch (error) {
        const { message, type } = outcome.failed(error)
        span.setAttribute('error.type', type)
        span.setStatus({ code: SpanStatusCode.ERROR, message })
        throw error
      } finally {
        span.end()
      }
    },
    close: async (timeoutMs) => {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        provider.shutdown().catch(() => {}),
        new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs) })
      ])
      clearTimeout(timer)
    }
  }
}
