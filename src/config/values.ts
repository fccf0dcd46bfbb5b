import { isIP } from 'node:net'
import { PREFIX } from '../prefix.js'

/** Single values: each parser says what is wrong in `problems`, naming the variable, never echoing a secret. */

export function parseHttpUrl (value: string, name: string, problems: string[]): URL | undefined {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    problems.push(`${name}: not a URL (expected http://… or https://…)`)
    return undefined
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    problems.push(`${name}: must be an http:// or https:// URL`)
    return undefined
  }
  if (url.username !== '' || url.password !== '') {
    problems.push(`${name}: must not carry a user name or password; use the credential settings`)
    return undefined
  }
  return url
}

export const CLUSTER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

export function parseClusters (value: string | undefined, problems: string[], label = `${PREFIX}CLUSTERS`): Map<string, URL> {
  const clusters = new Map<string, URL>()
  if (value === undefined || value === 'auto') return clusters
  for (const entry of value.split(',').map((part) => part.trim()).filter(Boolean)) {
    const at = entry.indexOf('=')
    const name = at > 0 ? entry.slice(0, at).trim() : ''
    if (!CLUSTER_NAME.test(name)) {
      problems.push(`${label}: expected name=url,name=url with names of letters, digits, '.', '_' or '-'`)
      continue
    }
    // One cluster per name whatever its case: the proxy serves `/clusters/GPU-A/` as `gpu-a`'s, and path rules ignore case.
    if ([...clusters.keys()].some((listed) => listed.toLowerCase() === name.toLowerCase())) {
      problems.push(`${label}: cluster ${name} is listed twice (names are compared without case)`)
      continue
    }
    const url = parseHttpUrl(entry.slice(at + 1).trim(), `${label} (${name})`, problems)
    if (url !== undefined) clusters.set(name, url)
  }
  return clusters
}

/** `host:port`, `[v6]:port`, or a bare port meaning `127.0.0.1:<port>`; a string says what is wrong. */
export function parseAddress (value: string): { host: string, port: number } | string {
  const match = /^(\d+)$/.exec(value) ?? /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d+)$/.exec(value)
  const port = Number(match?.at(-1))
  if (match === null || !Number.isInteger(port) || port > 65535) return 'expected host:port, [v6]:port or a port, e.g. 0.0.0.0:9090 or 9090'
  return { host: match.length === 2 ? '127.0.0.1' : (match[1] ?? match[2] as string), port }
}

export function list (value: string | undefined): string[] {
  return value === undefined ? [] : value.split(',').map((part) => part.trim()).filter(Boolean)
}

export function isLoopback (host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '')
  if (bare === 'localhost') return true
  if (isIP(bare) === 4) return bare.startsWith('127.')
  return bare === '::1'
}

/**
 * Whether a route (or the top level) reads its clusters from the control plane at
 * its upstream: `clusters: auto`, or a Run:ai set whose clusters are not named.
 */
export function discoversClusters (clusters: string | undefined, flavour: string): boolean {
  return clusters === 'auto' || (flavour === 'runai' && clusters === undefined)
}
