import { readFileSync } from 'node:fs'

/** The processes below `pid`, read from /proc (children first, then theirs). */
function descendants (pid: number): number[] {
  let children: number[] = []
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
  } catch {}
  return [...children, ...children.flatMap(descendants)]
}

/** Whether `pid` still runs: it exists and is not a zombie waiting to be reaped. */
function alive (pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

/**
 * Ends `pid` and every process below it, even those in sessions of their own (a
 * pseudo-terminal's): SIGTERM, SIGKILL to what is left after 5 s; resolves once all
 * are gone, fails after 10 s.
 */
export async function endTree (pid: number): Promise<void> {
  const tree = [pid, ...descendants(pid)]
  const signal = (name: NodeJS.Signals): void => {
    for (const one of tree) {
      try {
        process.kill(one, name)
      } catch {}
    }
  }
  signal('SIGTERM')
  for (let waited = 0; tree.some(alive); waited += 50) {
    if (waited === 5000) signal('SIGKILL')
    if (waited >= 10_000) throw new Error(`processes ${tree.filter(alive).join(', ')} did not end`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}
