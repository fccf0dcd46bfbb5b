import { EventEmitter, once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { gunzipSync } from 'node:zlib'
import type { Teardown } from './stack.js'

/**
 * An OpenTelemetry collector's OTLP/HTTP trace receiver on 127.0.0.1: it takes
 * `POST /v1/traces` as protobuf (decoded here from the wire format, by the
 * opentelemetry-proto field numbers) or as JSON, and keeps each span with its
 * resource. The raw bodies are kept too, for the secrets scan.
 */

export type Value = string | number | boolean
export interface ReceivedSpan {
  readonly traceId: string
  readonly spanId: string
  /** '' for a trace's root. */
  readonly parentSpanId: string
  readonly traceState: string
  readonly name: string
  /** 1 internal, 2 server, 3 client. */
  readonly kind: number
  readonly attributes: Record<string, Value>
  /** 0 unset, 1 ok, 2 error. */
  readonly status: { readonly code: number, readonly message: string }
  readonly resource: Record<string, Value>
  readonly startNs: bigint
  readonly endNs: bigint
}

export const SERVER = 2
export const CLIENT = 3

export interface Collector {
  /** The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`. */
  readonly url: string
  readonly spans: ReceivedSpan[]
  /** Each export's body as sent (protobuf as latin1), and its content type. */
  readonly bodies: Array<{ readonly type: string, readonly text: string }>
  /** Headers of each export. */
  readonly headers: Array<Record<string, string | string[] | undefined>>
  /** Resolves with the spans once `predicate` holds of them; fails after `timeoutMs`. */
  readonly waitFor: (predicate: (spans: readonly ReceivedSpan[]) => boolean, timeoutMs?: number, what?: string) => Promise<ReceivedSpan[]>
  /** Resolves once `count` exports arrived, whatever their answer; fails after `timeoutMs`. */
  readonly waitForBodies: (count: number, timeoutMs: number) => Promise<void>
  /** Answer exports with this status from now on (200 by default). */
  status: number
  readonly close: () => Promise<void>
}

export async function startCollector (t: Teardown): Promise<Collector> {
  const events = new EventEmitter()
  const spans: ReceivedSpan[] = []
  const bodies: Collector['bodies'] = []
  const headers: Collector['headers'] = []
  const collector = {
    url: '',
    spans,
    bodies,
    headers,
    status: 200,
    waitFor: async (predicate: (spans: readonly ReceivedSpan[]) => boolean, timeoutMs = 10_000, what = 'spans') => {
      const deadline = AbortSignal.timeout(timeoutMs)
      while (!predicate(spans)) {
        try {
          await once(events, 'spans', { signal: deadline })
        } catch {
          throw new Error(`the collector did not receive ${what} within ${timeoutMs} ms; it has: ${spans.map((span) => span.name).join(', ')}`)
        }
      }
      return spans
    },
    waitForBodies: async (count: number, timeoutMs: number) => {
      const deadline = AbortSignal.timeout(timeoutMs)
      while (bodies.length < count) {
        try {
          await once(events, 'body', { signal: deadline })
        } catch {
          throw new Error(`the collector did not receive ${count} exports within ${timeoutMs} ms (it has ${bodies.length})`)
        }
      }
    },
    close: async () => {}
  }
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      let body = Buffer.concat(chunks)
      if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body)
      const type = String(req.headers['content-type'] ?? '')
      headers.push({ ...req.headers })
      bodies.push({ type, text: body.toString('latin1') })
      events.emit('body')
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404).end()
        return
      }
      if (collector.status !== 200) {
        res.writeHead(collector.status, { 'content-type': 'text/plain' }).end('unavailable')
        return
      }
      const received = type.startsWith('application/json') ? fromJson(JSON.parse(body.toString('utf8')) as JsonRequest) : fromProtobuf(body)
      spans.push(...received)
      res.writeHead(200, { 'content-type': type.startsWith('application/json') ? 'application/json' : 'application/x-protobuf' }).end(type.startsWith('application/json') ? '{}' : '')
      events.emit('spans')
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  collector.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  collector.close = async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  }
  t.teardown(collector.close)
  return collector
}

/** The span named `name` whose attributes include `attributes`; fails when there is none. */
export function spanOf (spans: readonly ReceivedSpan[], name: string | RegExp, attributes: Record<string, Value> = {}): ReceivedSpan {
  const found = spans.find((span) => (typeof name === 'string' ? span.name === name : name.test(span.name)) &&
    Object.entries(attributes).every(([key, value]) => span.attributes[key] === value))
  if (found === undefined) throw new Error(`no span ${String(name)} with ${JSON.stringify(attributes)} among ${spans.map((span) => `${span.name} ${JSON.stringify(span.attributes)}`).join('; ')}`)
  return found
}

// ---- the protobuf wire format (https://protobuf.dev/programming-guides/encoding/) ----

type Field = { readonly number: number, readonly varint?: bigint, readonly bytes?: Buffer, readonly fixed?: Buffer }

function fields (buffer: Buffer): Field[] {
  const out: Field[] = []
  let at = 0
  const varint = (): bigint => {
    let result = 0n
    let shift = 0n
    for (;;) {
      const byte = buffer[at++]
      if (byte === undefined) throw new Error('truncated varint')
      result |= BigInt(byte & 0x7f) << shift
      if ((byte & 0x80) === 0) return result
      shift += 7n
    }
  }
  while (at < buffer.length) {
    const tag = Number(varint())
    const number = tag >> 3
    switch (tag & 7) {
      case 0: out.push({ number, varint: varint() }); break
      case 1: out.push({ number, fixed: buffer.subarray(at, at + 8) }); at += 8; break
      case 2: {
        const length = Number(varint())
        out.push({ number, bytes: buffer.subarray(at, at + length) })
        at += length
        break
      }
      case 5: out.push({ number, fixed: buffer.subarray(at, at + 4) }); at += 4; break
      default: throw new Error(`wire type ${tag & 7} is not OTLP's`)
    }
  }
  return out
}

const all = (list: Field[], number: number): Field[] => list.filter((field) => field.number === number)
const first = (list: Field[], number: number): Field | undefined => list.find((field) => field.number === number)
const text = (field: Field | undefined): string => field?.bytes?.toString('utf8') ?? ''
const hex = (field: Field | undefined): string => field?.bytes?.toString('hex') ?? ''

function anyValue (buffer: Buffer): Value {
  const [field] = fields(buffer)
  if (field === undefined) return ''
  switch (field.number) {
    case 1: return text(field)
    case 2: return field.varint === 1n
    case 3: return Number(BigInt.asIntN(64, field.varint ?? 0n))
    case 4: return (field.fixed as Buffer).readDoubleLE(0)
    default: return `[${field.number}]`
  }
}

function attributesOf (list: Field[], number: number): Record<string, Value> {
  const attributes: Record<string, Value> = {}
  for (const { bytes } of all(list, number)) {
    const pair = fields(bytes as Buffer)
    attributes[text(first(pair, 1))] = anyValue(first(pair, 2)?.bytes ?? Buffer.alloc(0))
  }
  return attributes
}

/** ExportTraceServiceRequest → ResourceSpans(1) → Resource(1), ScopeSpans(2) → Span(2). */
function fromProtobuf (body: Buffer): ReceivedSpan[] {
  const out: ReceivedSpan[] = []
  for (const { bytes: resourceSpans } of all(fields(body), 1)) {
    const rs = fields(resourceSpans as Buffer)
    const resource = attributesOf(fields(first(rs, 1)?.bytes ?? Buffer.alloc(0)), 1)
    for (const { bytes: scopeSpans } of all(rs, 2)) {
      for (const { bytes } of all(fields(scopeSpans as Buffer), 2)) {
        const span = fields(bytes as Buffer)
        const status = fields(first(span, 15)?.bytes ?? Buffer.alloc(0))
        out.push({
          traceId: hex(first(span, 1)),
          spanId: hex(first(span, 2)),
          traceState: text(first(span, 3)),
          parentSpanId: hex(first(span, 4)),
          name: text(first(span, 5)),
          kind: Number(first(span, 6)?.varint ?? 0n),
          startNs: first(span, 7)?.fixed?.readBigUInt64LE(0) ?? 0n,
          endNs: first(span, 8)?.fixed?.readBigUInt64LE(0) ?? 0n,
          attributes: attributesOf(span, 9),
          status: { code: Number(first(status, 3)?.varint ?? 0n), message: text(first(status, 2)) },
          resource
        })
      }
    }
  }
  return out
}

// ---- OTLP/JSON ----

interface JsonValue { stringValue?: string, boolValue?: boolean, intValue?: string | number, doubleValue?: number }
interface JsonAttribute { key: string, value: JsonValue }
interface JsonSpan {
  traceId: string, spanId: string, parentSpanId?: string, traceState?: string, name: string, kind: number,
  startTimeUnixNano: string | number, endTimeUnixNano: string | number, attributes?: JsonAttribute[], status?: { code?: number, message?: string }
}
interface JsonRequest { resourceSpans: Array<{ resource?: { attributes?: JsonAttribute[] }, scopeSpans: Array<{ spans: JsonSpan[] }> }> }

function jsonAttributes (list: JsonAttribute[] | undefined): Record<string, Value> {
  const out: Record<string, Value> = {}
  for (const { key, value } of list ?? []) {
    out[key] = value.stringValue ?? value.boolValue ?? (value.intValue !== undefined ? Number(value.intValue) : value.doubleValue ?? '')
  }
  return out
}

function fromJson (body: JsonRequest): ReceivedSpan[] {
  return body.resourceSpans.flatMap(({ resource, scopeSpans }) => scopeSpans.flatMap(({ spans }) => spans.map((span) => ({
    traceId: span.traceId,
    spanId: span.spanId,
    parentSpanId: span.parentSpanId ?? '',
    traceState: span.traceState ?? '',
    name: span.name,
    kind: span.kind,
    startNs: BigInt(span.startTimeUnixNano),
    endNs: BigInt(span.endTimeUnixNano),
    attributes: jsonAttributes(span.attributes),
    status: { code: span.status?.code ?? 0, message: span.status?.message ?? '' },
    resource: jsonAttributes(resource?.attributes)
  }))))
}
