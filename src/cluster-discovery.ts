import { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import { type Dispatcher, request } from 'undici'
import { CLUSTER_NAME } from './config/values.js'
import { displayUrl } from './errors.js'
import { someOf } from './suggest.js'
import { networkReason } from './oauth/http.js'
import type { TokenSource } from './token/access-token.js'
import type { Tracing } from './tracing.js'
import { joinPath } from './url.js'

/** A cluster as the control plane lists it, once found usable. */
export interface DiscoveredCluster {
  readonly name: string
  readonly uuid: string
  readonly url: URL
  /** As the control plane reports it (`Connected`, …), for `bearer-proxy clusters`. */
  readonly status: string
}

/** A listed cluster that is not served, and why (names only, never the rest of the entry). */
export interface SkippedCluster { readonly name: string, readonly reason: string }

export interface ClusterList { readonly clusters: DiscoveredCluster[], readonly skipped: SkippedCluster[] }

/** Where Run:ai lists the clusters of a control plane. */
export const CLUSTERS_PATH = '/api/v1/clusters'
const MAX_BODY = 4 * 1024 * 1024
const UUID = /^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$/

/** A failure to list the clusters, in words fit for a log line. */
export class DiscoveryError extends Error {}

/**
 * `GET <control plane>/api/v1/clusters` with the token, and the clusters that can
 * be served: a safe path-segment name, a `domain` that is an http(s) URL without
 * credentials (https unless the control plane itself is plain http).
 */
export async function listClusters (controlPlane: URL, tokens: TokenSource, dispatcher: Dispatcher, timeoutSeconds: number, traceparent?: string): Promise<ClusterList> {
  const token = await tokens.get(traceparent)
  const url = joinPath(controlPlane, CLUSTERS_PATH)
  let status: number
  let text = ''
  try {
    const response = await request(url, {
      dispatcher,
      headers: { ...token.headersFor('GET', url), accept: 'application/json', ...(traceparent === undefined ? {} : { traceparent }) },
      headersTimeout: timeoutSeconds * 1000,
      bodyTimeout: timeoutSeconds * 1000,
      // For the whole answer: a control plane that trickles its list is cut off, not waited for.
      signal: AbortSignal.timeout(timeoutSeconds * 1000)
    })
    status = response.statusCode
    for await (const chunk of response.body) {
      text += (chunk as Buffer).toString('utf8')
      if (text.length > MAX_BODY) {
        response.body.destroy()
        throw new DiscoveryError(`${displayUrl(url)} answered more than 4 MiB`)
      }
    }
  } catch (error) {
    if (error instanceof DiscoveryError) throw error
    throw new DiscoveryError(`${displayUrl(url)} is unreachable: ${networkReason(error)}`)
  }
  if (status === 401) tokens.drop(token)
  if (status !== 200) throw new DiscoveryError(`${displayUrl(url)} answered ${status}`)
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch {
    throw new DiscoveryError(`${displayUrl(url)} answered with a body that is not JSON`)
  }
  if (!Array.isArray(body)) throw new DiscoveryError(`${displayUrl(url)} did not answer a list of clusters`)
  return servableClusters(body, controlPlane)
}

/** The entries of a cluster list that can be served, and why the others cannot. */
export function servableClusters (entries: unknown[], controlPlane: URL): ClusterList {
  const clusters: DiscoveredCluster[] = []
  const skipped: SkippedCluster[] = []
  const taken = new Set<string>()
  for (const [index, entry] of entries.entries()) {
    const fields = typeof entry === 'object' && entry !== null ? entry as Record<string, unknown> : {}
    const name = typeof fields.name === 'string' ? fields.name : ''
    const uuid = typeof fields.uuid === 'string' && UUID.test(fields.uuid) ? fields.uuid.toLowerCase() : undefined
    // A name that is not safe to print is never repeated: its uuid, else its place in the list, says which cluster it is.
    const shown = CLUSTER_NAME.test(name) && name.length <= 253 ? name : uuid !== undefined ? `with uuid ${uuid}` : `number ${index + 1} of the list`
    const reason = !CLUSTER_NAME.test(name) || name.length > 253
      ? 'its name is not a safe path segment (letters, digits, ".", "_", "-")'
      : uuid === undefined
        ? 'it has no uuid'
        : taken.has(name.toLowerCase()) || taken.has(uuid)
          ? 'its name or uuid (compared without case) is already served by another cluster'
          : undefined
    const url = reason === undefined ? domainOf(fields.domain, controlPlane) : undefined
    if (reason !== undefined || typeof url === 'string' || url === undefined) {
      skipped.push({ name: shown, reason: reason ?? (typeof url === 'string' ? url : 'it has no domain') })
      continue
    }
    taken.add(name.toLowerCase()).add(uuid as string)
    clusters.push({ name, uuid: uuid as string, url, status: statusOf(fields.status) })
  }
  return { clusters, skipped }
}

/** The cluster's URL from its `domain`, or why it cannot be used. */
function domainOf (domain: unknown, controlPlane: URL): URL | string | undefined {
  if (typeof domain !== 'string' || domain.trim() === '') return undefined
  let url: URL
  try {
    // A bare host name (as the UI shows it) is served over https.
    url = new URL(domain.includes('://') ? domain : `https://${domain}`)
  } catch {
    return 'its domain is not a URL'
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return 'its domain is not an http(s) URL'
  if (url.username !== '' || url.password !== '') return 'its domain carries credentials'
  if (url.protocol === 'http:' && controlPlane.protocol === 'https:') return 'its domain is plain http while the control plane is https'
  url.search = ''
  url.hash = ''
  return url
}

/** The cluster's state as a short word (`Connected`), or `unknown`: nothing else of the entry is repeated. */
function statusOf (status: unknown): string {
  const state = typeof status === 'object' && status !== null ? (status as Record<string, unknown>).state : status
  return typeof state === 'string' && /^[\w .-]{1,40}$/.test(state) ? state : 'unknown'
}

export interface DiscoveryOptions {
  readonly controlPlane: URL
  readonly tokens: TokenSource & EventEmitter
  readonly dispatcher: Dispatcher
  readonly log: Logger
  /** Traces, when on: a span per read of the list. */
  readonly tracing?: Tracing | undefined
  readonly timeout: number
  /** How often the list is read again (5 minutes). */
  readonly intervalMs?: number
  /** The least time between two reads asked for by requests naming an unknown cluster (30 s). */
  readonly onDemandMs?: number
}

/**
 * The clusters of a Run:ai control plane, kept current: read once the first token is
 * held, then every 5 minutes, and (at most every 30 s) when a request names a
 * cluster not in the list. A failed read keeps the last good list.
 *
 * Events: `change` (the new list), `refresh` ({ ok: boolean }) after every read.
 */
export class ClusterDiscovery extends EventEmitter {
  readonly #options: DiscoveryOptions
  #clusters: readonly DiscoveredCluster[] = []
  #inflight: Promise<void> | undefined
  #lastRead = 0
  #timer: NodeJS.Timeout | undefined
  #closed = false
  /** Skipped clusters already logged, by name and reason: said once, not at every read. */
  readonly #said = new Set<string>()

  constructor (options: DiscoveryOptions) {
    super()
    this.#options = options
  }

  get clusters (): readonly DiscoveredCluster[] { return this.#clusters }

  /** The first read once a token is held (a failed token request is the token manager's to report). */
  start (): void {
    const { tokens } = this.#options
    const first = ({ result }: { result: string }): void => {
      if (result !== 'success') return
      tokens.off('fetch', first)
      this.refresh().catch(() => {})
    }
    tokens.on('fetch', first)
  }

  /** Reads the list now, or joins the read in flight. */
  async refresh (): Promise<void> {
    this.#inflight ??= this.#read().finally(() => { this.#inflight = undefined })
    return await this.#inflight
  }

  /** For a request naming an unknown cluster: a read, unless one happened in the last 30 s. */
  async refreshIfStale (): Promise<void> {
    if (this.#inflight === undefined && Date.now() - this.#lastRead < (this.#options.onDemandMs ?? 30_000)) return
    await this.refresh()
  }

  close (): void {
    this.#closed = true
    clearTimeout(this.#timer)
  }

  async #read (): Promise<void> {
    const { controlPlane, tokens, dispatcher, log, timeout, tracing } = this.#options
    this.#lastRead = Date.now()
    try {
      const { clusters, skipped } = tracing === undefined
        ? await listClusters(controlPlane, tokens, dispatcher, timeout)
        : await tracing.operation('cluster list', undefined, { 'url.full': displayUrl(joinPath(controlPlane, CLUSTERS_PATH)) },
          async (traceparent) => await listClusters(controlPlane, tokens, dispatcher, timeout, traceparent), {
            succeeded: (list: ClusterList) => ({ 'bearer_proxy.clusters.served': list.clusters.length, 'bearer_proxy.clusters.skipped': list.skipped.length }),
            failed: (error) => ({ message: error instanceof DiscoveryError ? error.message : 'the list could not be read', type: error instanceof DiscoveryError ? 'cluster_list_failed' : 'Error' })
          })
      for (const { name, reason } of skipped) {
        const key = `${name}\n${reason}`
        if (this.#said.has(key)) continue
        this.#said.add(key)
        log.warn({ event: 'cluster_skipped', cluster: name, reason }, `cluster ${name} is not served: ${reason}`)
      }
      const before = new Map(this.#clusters.map((cluster) => [cluster.name, cluster.url.href]))
      const added = clusters.filter((cluster) => before.get(cluster.name) !== cluster.url.href).map((cluster) => cluster.name)
      const removed = [...before.keys()].filter((name) => !clusters.some((cluster) => cluster.name === name))
      this.#clusters = clusters
      if (added.length > 0 || removed.length > 0) {
        // A list of thousands is counted, not written out: at most 100 names a field, 20 in the message.
        const names = clusters.map((cluster) => cluster.name)
        log.info({ event: 'clusters_discovered', added: added.slice(0, 100), removed: removed.slice(0, 100), served: names.slice(0, 100), count: names.length },
          `clusters served (${names.length}): ${someOf(names) || 'none'}`)
        this.emit('change', clusters)
      }
      this.emit('refresh', { ok: true })
    } catch (error) {
      const reason = error instanceof DiscoveryError ? error.message : (error as Error).message
      log.warn({ event: 'cluster_discovery_failed', error: reason }, 'could not read the clusters; the last list is kept')
      this.emit('refresh', { ok: false })
    } finally {
      this.#schedule()
    }
  }

  #schedule (): void {
    if (this.#closed) return
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => { this.refresh().catch(() => {}) }, this.#options.intervalMs ?? 300_000)
    this.#timer.unref()
  }
}
