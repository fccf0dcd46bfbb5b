/**
 * "Did you mean …": the candidate closest to a mistyped word, when it is close
 * enough to be the likely intent (edit distance, case ignored, a swap of two
 * neighbouring letters counting once).
 */
export function closest (word: string, candidates: Iterable<string>): string | undefined {
  const typed = word.toLowerCase()
  const list = [...candidates]
  // An abbreviation of one candidate only (`--env` for `--env-file`).
  const extended = list.filter((candidate) => candidate.toLowerCase().startsWith(typed))
  if (typed.replace(/^-+/, '').length >= 3 && extended.length === 1) return extended[0]
  const limit = Math.max(1, Math.min(3, Math.floor(typed.length / 3)))
  let best: string | undefined
  let bestDistance = limit + 1
  for (const candidate of list) {
    const distance = editDistance(typed, candidate.toLowerCase())
    if (distance < bestDistance) {
      best = candidate
      bestDistance = distance
    }
  }
  return best
}

/** " (did you mean X?)" or nothing. */
export function didYouMean (word: string, candidates: Iterable<string>): string {
  const match = closest(word, candidates)
  return match === undefined ? '' : `; did you mean ${match}?`
}

/** Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps. */
function editDistance (a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 3) return Infinity
  const rows: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) (rows[0] as number[])[j] = j
  for (let i = 1; i <= a.length; i++) {
    const row = rows[i] as number[]
    const above = rows[i - 1] as number[]
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      let value = Math.min((above[j] as number) + 1, (row[j - 1] as number) + 1, (above[j - 1] as number) + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) value = Math.min(value, (rows[i - 2] as number[])[j - 2] as number + 1)
      row[j] = value
    }
  }
  return (rows[a.length] as number[])[b.length] as number
}

/** Names for a message or log line, at most `most` of them: `a, b, c and 19997 more` (a list may be long). */
export function someOf (names: readonly string[], most = 20): string {
  return names.length <= most ? names.join(', ') : `${names.slice(0, most).join(', ')} and ${names.length - most} more`
}
