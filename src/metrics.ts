import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { TokenManager } from './token/manager.js'

const NO_LAG_YET = /^bearer_proxy_nodejs_eventloop_lag_mean_seconds nan$/im
const LAG_SAMPLES = /^bearer_proxy_nodejs_eventloop_lag_\w*seconds .*\n/gm

/**
 * Prometheus metrics (prom-client, own registry). Labels are the route name
 * (`admin`, a cluster name, or `none`), a status code and a fetch result: never a
 * path, a header or anything a client or token endpoint sent.
 */
export class Metrics {
  readonly registry = new Registry()
  readonly #requests: Counter<'upstream' | 'status'>
  readonly #duration: Histogram<'upstream'>
  readonly #recorders = new Map<string, { count: Map<number, Counter.Internal>, duration: Histogram.Internal<'upstream'> }>()
  readonly #fetches: Counter<'credentials' | 'result'>
  readonly #counting = new Map<TokenManager, (fetch: { result: 'success' | 'failure' }) => void>()
  #processMetrics = false

  /**
   * Token series are labelled by credential set (`default` without a configuration
   * file's `credentials:`), read from `credentials` at each scrape: a reload that adds
   * or removes sets changes that map, and calls `count` and `forget`.
   */
  constructor (credentials: ReadonlyMap<string, TokenManager>) {
    this.#requests = new Counter({
      name: 'bearer_proxy_requests_total',
      help: 'Requests answered, by upstream route and status',
      labelNames: ['upstream', 'status'],
      registers: [this.registry]
    })
    this.#duration = new Histogram({
      name: 'bearer_proxy_request_duration_seconds',
      help: 'Time to answer a request, by upstream route',
      labelNames: ['upstream'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [this.registry]
    })
    this.#fetches = new Counter({
      name: 'bearer_proxy_token_fetches_total',
      help: 'Token requests, by credential set and result',
      labelNames: ['credentials', 'result'],
      registers: [this.registry]
    })
    for (const [name, tokens] of credentials) this.count(name, tokens)
    new Gauge({ // eslint-disable-line no-new
      name: 'bearer_proxy_token_expiry_seconds',
      help: 'Seconds until the held token expires (0 when none is held), by credential set',
      labelNames: ['credentials'],
      registers: [this.registry],
      collect () {
        for (const [name, tokens] of credentials) {
          const { expiresAt } = tokens.status()
          this.set({ credentials: name }, expiresAt === undefined ? 0 : Math.max(0, (expiresAt - Date.now()) / 1000))
        }
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: 'bearer_proxy_token_ready',
      help: '1 while a valid token is held, by credential set',
      labelNames: ['credentials'],
      registers: [this.registry],
      collect () {
        for (const [name, tokens] of credentials) this.set({ credentials: name }, tokens.status().ready ? 1 : 0)
      }
    })
  }

  /**
   * The exposition, for `/-/metrics`. Node's process metrics (prom-client's default
   * collectors) start at the first scrape: their event-loop monitor is a timer (every
   * 100 ms here, prom-client's default being 10 ms) and a GC observer runs at each
   * collection, which a proxy nobody scrapes should not pay for: idle, it then wakes
   * no more than its own timers ask. Their counters start from that scrape.
   */
  async scrape (): Promise<string> {
    if (!this.#processMetrics) {
      this.#processMetrics = true
      collectDefaultMetrics({ register: this.registry, prefix: 'bearer_proxy_', eventLoopMonitoringPrecision: 100 })
    }
    const text = await this.registry.metrics()
    // Until the event-loop monitor has a sample (the first scrape), prom-client reports its lag as 0, its
    // min as 2^63 ns, its mean and deviation as `Nan`: those series are left out until they have a value.
    return NO_LAG_YET.test(text) ? text.replace(LAG_SAMPLES, '') : text
  }

  /** Counts the token requests of a credential set, from zero. */
  count (name: string, tokens: TokenManager): void {
    this.#fetches.inc({ credentials: name, result: 'success' }, 0)
    this.#fetches.inc({ credentials: name, result: 'failure' }, 0)
    const counted = ({ result }: { result: 'success' | 'failure' }): void => { this.#fetches.inc({ credentials: name, result }) }
    tokens.on('fetch', counted)
    this.#counting.set(tokens, counted)
  }

  /** A credential set removed by a reload: its series go with it. */
  forget (name: string, tokens: TokenManager): void {
    const counted = this.#counting.get(tokens)
    if (counted !== undefined) tokens.off('fetch', counted)
    this.#counting.delete(tokens)
    this.#fetches.remove({ credentials: name, result: 'success' })
    this.#fetches.remove({ credentials: name, result: 'failure' })
  }

  /** Records one answered request; label children are made once per route and status. */
  observe (upstream: string, status: number, seconds: number): void {
    let recorder = this.#recorders.get(upstream)
    if (recorder === undefined) {
      recorder = { count: new Map(), duration: this.#duration.labels(upstream) }
      this.#recorders.set(upstream, recorder)
    }
    let count = recorder.count.get(status)
    if (count === undefined) {
      count = this.#requests.labels(upstream, String(status))
      recorder.count.set(status, count)
    }
    count.inc()
    recorder.duration.observe(seconds)
  }
}
