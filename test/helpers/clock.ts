import type { Clock } from '../../src/token/clock.js'

/** A clock that moves only when told: renewal, back-off and expiry tested without waiting for them. */
export class FakeClock implements Clock {
  #now = Date.now()
  #next = 0
  readonly #timers = new Map<number, { at: number, run: () => void }>()

  now (): number {
    return this.#now
  }

  setTimeout (run: () => void, ms: number): number {
    this.#timers.set(++this.#next, { at: this.#now + Math.max(0, ms), run })
    return this.#next
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
