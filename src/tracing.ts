import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'

/**
 * OpenTelemetry traces, when the standard `OTEL_*` variables ask for them: what the
 * proxy needs of a tracer, and the settings read from the environment. The tracer
 * itself (`otel.ts`, the OpenTelemetry SDK and its OTLP exporters) is a file of its
 * own in dist/, loaded only then: without those variables nothing of it is read.
 */

/** Attributes of a span: never a header value, a query, a token or a secret. */
export type SpanAttributes = Record<string, string | number | boolean>

export interface Tracing {
  /**
   * A request the listener took: its server span starts, continuing the client's
   * `traceparent` (and `tracestate`), which the request's headers now give as the
   * server span's; it ends when the response closes.
   */
  serve (request: IncomingMessage, response: ServerResponse): void
  /** A WebSocket upgrade the listener took: a server span as `serve`'s, ended by the handshake's answer. */
  upgrade (request: IncomingMessage): Handshake
  /** What served the request, once known: Fastify's pattern, the route's name, and the proxy's error code when it answered itself. */
  routed (request: IncomingMessage, pattern: string | undefined, route: string | undefined, proxyError: string | undefined): void
  /** The ids of the request's server span, for its log line. */
  ids (request: IncomingMessage): { traceId: string, spanId: string } | undefined
  /**
   * One attempt to send a request to its upstream: a client span, the child of the
   * `traceparent` in `headers` (the server span's), which then names the client span,
   * as the upstream's parent.
   */
  attempt (headers: Record<string, unknown>, method: string, origin: string, path: string, route: string, resend: number): Attempt
  /**
   * One of the proxy's own operations (a token request, a cluster list read): a span,
   * the child of `parent` (a `traceparent`) or a trace's root, with `work`'s outcome.
   * `work` is given the span's own `traceparent`, for a request it sends.
   */
  operation<T> (name: string, parent: string | undefined, attributes: SpanAttributes, work: (traceparent: string | undefined) => Promise<T>, outcome: Outcome<T>): Promise<T>
  /** The spans not yet exported are sent, within `timeoutMs`. */
  close (timeoutMs: number): Promise<void>
}

/** The end of an upgrade's server span: the status it was answered with, the route, the proxy's error code when it refused it. */
export interface Handshake {
  end (status: number, route: string | undefined, proxyError: string | undefined): void
}

/** How an operation's result and failure read on its span. */
export interface Outcome<T> {
  readonly succeeded: (result: T) => SpanAttributes
  /** Why it failed, in one line with no secret (the log's wording), and its kind (`error.type`). */
  readonly failed: (error: unknown) => { readonly message: string, readonly type: string }
}

export interface Attempt {
  /** The upstream's answer, or the error that ended the attempt; `retry` when the proxy sends the request again because of it. */
  end (answer: number | Error, retry?: 'token_rejected' | 'use_dpop_nonce'): void
}

/** The exporter's wire formats an OTLP/HTTP collector takes (4318); gRPC (4317) is not built in. */
const PROTOCOLS = ['http/protobuf', 'http/json'] as const
const SAMPLERS = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'] as const

export interface TracingSettings {
  /** Where spans are sent: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, or `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces`. */
  readonly endpoint: URL
  readonly protocol: typeof PROTOCOLS[number]
  readonly sampler: typeof SAMPLERS[number]
  /** The share of traces kept by the ratio samplers. */
  readonly ratio: number
  /** The batching of spans (`OTEL_BSP_*`), where set. */
  readonly batch: { readonly scheduledDelayMillis?: number, readonly maxQueueSize?: number, readonly maxExportBatchSize?: number, readonly exportTimeoutMillis?: number }
}

const BATCH = {
  scheduledDelayMillis: 'OTEL_BSP_SCHEDULE_DELAY',
  maxQueueSize: 'OTEL_BSP_MAX_QUEUE_SIZE',
  maxExportBatchSize: 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE',
  exportTimeoutMillis: 'OTEL_BSP_EXPORT_TIMEOUT'
} as const

/** An `OTEL_*` variable that cannot be used: exit 2, as a bad setting. */
export class TracingError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'TracingError'
  }
}

const DEFAULT_ENDPOINT = 'http://localhost:4318'

/**
 * Tracing's settings from the OpenTelemetry specification's variables, or undefined
 * when traces are not asked for: no OTLP endpoint is set and `OTEL_TRACES_EXPORTER`
 * is not `otlp`, or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`. The
 * exporter's headers, timeout, compression and certificates, and the resource
 * (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), are read by the SDK itself.
 */
export function tracingSettings (env: NodeJS.ProcessEnv): TracingSettings | undefined {
  const read = (name: string): string | undefined => {
    const value = env[name]?.trim()
    return value === undefined || value === '' ? undefined : value
  }
  if (read('OTEL_SDK_DISABLED')?.toLowerCase() === 'true') return undefined
  const traces = read('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT')
  const base = read('OTEL_EXPORTER_OTLP_ENDPOINT')
  const exporter = read('OTEL_TRACES_EXPORTER')?.toLowerCase() ?? (traces !== undefined || base !== undefined ? 'otlp' : 'none')
  if (exporter === 'none') return undefined
  if (exporter !== 'otlp') throw new TracingError(`OTEL_TRACES_EXPORTER: "${exporter}" is not supported; use otlp, or none`)
  const endpoint = traces ?? `${(base ?? DEFAULT_ENDPOINT).replace(/\/+$/, '')}/v1/traces`
  const name = traces !== undefined ? 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' : 'OTEL_EXPORTER_OTLP_ENDPOINT'
  let url: URL
  try {
    url = new URL(endpoint)
  } catch {
    throw new TracingError(`${name}: not a URL`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TracingError(`${name}: must be an http:// or https:// URL (OTLP/HTTP)`)
  if (url.username !== '' || url.password !== '') throw new TracingError(`${name}: must not carry a user or password; give the collector's credentials in OTEL_EXPORTER_OTLP_HEADERS`)
  const protocolName = read('OTEL_EXPORTER_OTLP_TRACES_PROTOCOL') !== undefined ? 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL' : 'OTEL_EXPORTER_OTLP_PROTOCOL'
  const protocol = read(protocolName) ?? 'http/protobuf'
  if (!(PROTOCOLS as readonly string[]).includes(protocol)) {
    throw new TracingError(`${protocolName}: "${protocol}" is not supported; use http/protobuf (the default) or http/json, sent to the collector's OTLP/HTTP port (4318)`)
  }
  const sampler = read('OTEL_TRACES_SAMPLER') ?? 'parentbased_always_on'
  if (!(SAMPLERS as readonly string[]).includes(sampler)) throw new TracingError(`OTEL_TRACES_SAMPLER: "${sampler}" is not one of ${SAMPLERS.join(', ')}`)
  const arg = read('OTEL_TRACES_SAMPLER_ARG')
  const ratio = arg === undefined || !sampler.endsWith('traceidratio') ? 1 : Number(arg)
  if (!(ratio >= 0 && ratio <= 1)) throw new TracingError('OTEL_TRACES_SAMPLER_ARG: must be a number from 0 to 1')
  const batch: Record<string, number> = {}
  for (const [option, variable] of Object.entries(BATCH)) {
    const value = read(variable)
    if (value === undefined) continue
    const number = Number(value)
    if (!Number.isInteger(number) || number < (option === 'exportTimeoutMillis' || option === 'scheduledDelayMillis' ? 0 : 1)) throw new TracingError(`${variable}: must be a whole number${option.endsWith('Millis') ? ' of milliseconds' : ', 1 or more'}`)
    batch[option] = number
  }
  return { endpoint: url, protocol: protocol as TracingSettings['protocol'], sampler: sampler as TracingSettings['sampler'], ratio, batch }
}

/** The tracer for `settings`: the OpenTelemetry SDK, loaded now. Export failures are logged on `log`, at most once a minute. */
export async function startTracing (settings: TracingSettings, log: Logger, version: string): Promise<Tracing> {
  const { createTracing } = await import('./otel.js')
  return createTracing(settings, version, (message) => { log.warn({ event: 'trace_export_failed', error: message }, 'traces could not be exported') })
}
