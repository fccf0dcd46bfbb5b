/** Time as a token manager sees it: the real clock, or a test's, so that renewal, back-off and expiry run on fake time. */
export interface Clock {
  now (): number
  /** Runs `run` after `ms`; the timer does not keep the process alive. */
  setTimeout (run: () => void, ms: number): unknown
  clearTimeout (timer: unknown): void
}

export const REAL_CLOCK: Clock = {
  now: () => Date.now(),
  setTimeout: (run, ms) => setTimeout(run, ms).unref(),
  clearTimeout: (timer) => { clearTimeout(timer as NodeJS.Timeout) }
}
