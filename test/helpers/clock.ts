import type { Clock } from '../../src/token/clock.js'

/**
 * A clock that moves only when told: renewal, back-off and expiry tested without
 * waiting for them. `auto`: time jumps to each timer as soon as it is set (a loop
 * that waits between network calls, such as a device login's polls, runs at once).
 */
export class FakeClock implements Clock {
  #now = Date.now()
  #next = 0
  readonly #timers = new Map<number, { at: number, run: () => void }>()
  readonly #auto: boolean

  constructor ({ auto = false }: { auto?: boolean } = {}) {
    this.#auto = auto
  }

  now (): number {
    return this.#now
  }

  setTimeout (run: () => void, ms: number): number {
    const id = ++this.#next
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), run })
    if (this.#auto) queueMicrotask(() => { if (this.#timers.has(id)) this.advance(Math.max(0, ms)) })
    return id
  }

  clearTimeout (timer: unknown): void {
    this.#timers.delete(timer as number)
  }

  /** Moves time on by `ms`, running each timer that falls due on the way, in order. */
  advance (ms: number): void {
    const until = this.#now + ms
    for (;;) {
      const due = [...this.#timers].filter(([, timer]) => timer.at <= until).sort((a, b) => a[1].at - b[1].at)[0]
      if (due === undefined) break
      this.#timers.delete(due[0])
      this.#now = due[1].at
      due[1].run()
    }
    this.#now = until
  }
}
