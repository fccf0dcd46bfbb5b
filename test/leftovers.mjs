// After the suite: no process it started from this clone may still run, since every test ends what it starts.
// Processes older than the suite (a demo the developer left running) are not its own, and are left alone.
import { readdirSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const stat = (pid) => {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name (which may hold spaces): state is the 1st, ppid the 2nd, starttime the 20th.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
    return { state: fields[0], ppid: Number(fields[1]), start: Number(fields[19]) }
  } catch {
    return undefined
  }
}
const cmdline = (pid) => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim()
  } catch {
    return ''
  }
}

// The suite began with the shell npm started for `npm test`: this script's parent.
const ancestors = new Set()
for (let pid = process.pid; pid > 1 && !ancestors.has(pid); pid = stat(pid)?.ppid ?? 1) ancestors.add(pid)
const began = stat(process.ppid)?.start ?? 0
const leftovers = () => readdirSync('/proc').filter((name) => /^\d+$/.test(name)).map(Number)
  .filter((pid) => !ancestors.has(pid))
  .filter((pid) => {
    const info = stat(pid)
    return info !== undefined && info.state !== 'Z' && info.start >= began && cmdline(pid).includes(root)
  })

// Teardowns that kill may still be finishing: up to 10 s for what is left to go.
let left = leftovers()
for (let waited = 0; left.length > 0 && waited < 10_000; waited += 100) {
  await new Promise((resolve) => setTimeout(resolve, 100))
  left = leftovers()
}
if (left.length > 0) {
  process.stderr.write(`the suite left ${left.length} process${left.length === 1 ? '' : 'es'} of this clone running:\n${left.map((pid) => `  ${pid} ${cmdline(pid)}`).join('\n')}\n`)
  process.exit(1)
}
process.stdout.write('the suite left no process of this clone running\n')
