import { readFileSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import type { Node } from 'yaml'
import { closest, didYouMean } from '../suggest.js'
import { SETTINGS } from './settings.js'

/**
 * `--config PATH`: the settings in a YAML (or JSON) file, one key per setting,
 * named as the variable in camelCase (`BEARER_PROXY_CLIENT_SECRET_FILE` is
 * `clientSecretFile`). Lists may be YAML sequences, `clusters` and `tokenParams`
 * mappings. The values become the same strings the variables would hold, so that
 * one set of rules checks both; each remembers its line, for the messages.
 */
export interface FileSettings {
  /** By setting name, without the prefix. */
  readonly values: Record<string, string>
  /** Where each setting was written, as `PATH:LINE: key`. */
  readonly origins: Record<string, string>
  /** `credentials:`: named credential sets, each its own settings. */
  readonly credentialSets: CredentialSetEntry[]
  /** `routes:`: each a prefix, an upstream and the credential set it uses. */
  readonly routes: RouteEntry[]
  readonly problems: string[]
  /** Settings that an unknown key was probably meant as: their absence is not a further problem. */
  readonly meant: string[]
  /** Whether the file was read and parsed: when not, its problems are all there is to say. */
  parsed: boolean
}

export interface CredentialSetEntry {
  readonly name: string
  /** Where the set starts (`PATH:LINE`), for the settings it lacks. */
  readonly at: string
  readonly meant: string[]
  readonly values: Record<string, string>
  readonly origins: Record<string, string>
}

export interface RouteEntry {
  /** `name`, `prefix`, `upstream`, `credentials`, the policy and `clusters`, as written. */
  readonly values: Record<string, string>
  readonly origins: Record<string, string>
  /** Where the entry starts, for problems about the entry as a whole. */
  readonly at: string
}

/** The settings a credential set may hold: how it gets tokens, and the control plane they come from. */
export const CREDENTIAL_SETTINGS: ReadonlySet<string> = new Set([
  'AUTH', 'GRANT', 'TOKEN_URL', 'ISSUER', 'REALM', 'CLIENT_ID', 'CLIENT_AUTH', 'USERNAME', 'SCOPE', 'AUDIENCE', 'TOKEN_PARAMS',
  'CLIENT_KEY_FILE', 'CLIENT_KEY_ID', 'CLIENT_ASSERTION_AUDIENCE', 'SERVICE_ACCOUNT_FILE', 'SUBJECT_TOKEN_FILE', 'SUBJECT_TOKEN_TYPE', 'REQUESTED_TOKEN_TYPE', 'RESOURCE', 'CLIENT_ASSERTION_FILE', 'ASSERTION_FILE', 'DPOP', 'DPOP_KEY_FILE', 'CLIENT_CERT_FILE', 'UPSTREAM_CLIENT_CERT', 'TOKEN_STORE', 'LOGIN_PORT', 'LOGIN_TIMEOUT',
  'APP_NAME', 'RUNAI_TOKEN_API', 'UPSTREAM', 'REFRESH_SKEW', 'TIMEOUT', 'ALLOW_HTTP_TOKEN_ENDPOINT',
  ...['CLIENT_SECRET', 'PASSWORD', 'REFRESH_TOKEN', 'API_KEY'].flatMap((name) => [name, `${name}_FILE`])
])
const ROUTE_KEYS = ['name', 'prefix', 'upstream', 'credentials', 'readOnly', 'allowPaths', 'denyPaths', 'clusters']
/** Route keys that hold a list (a YAML sequence, or comma-separated). */
const ROUTE_LISTS = new Set(['allowPaths', 'denyPaths'])

/** A setting's key in the file: `CLIENT_SECRET_FILE` → `clientSecretFile`. */
export function fileKey (setting: string): string {
  return setting.toLowerCase().replace(/_([a-z])/g, (_match, letter: string) => letter.toUpperCase())
}

const SETTING_OF = new Map(Object.keys(SETTINGS).map((setting) => [fileKey(setting), setting]))
/** Settings that hold a comma-separated list: a YAML sequence is joined. */
const LISTS = new Set(['ALLOWED_HOSTS', 'ALLOWED_ORIGINS', 'ALLOW_PATHS', 'DENY_PATHS', 'CLUSTERS'])

type Yaml = typeof import('yaml')
let parser: Yaml | undefined
/** The YAML parser, loaded on first use: a proxy configured by its environment never pays for it. */
const yaml = (): Yaml => (parser ??= createRequire(import.meta.url)('yaml') as Yaml)

/** The largest configuration file read: 256 KiB (a reload parses it while requests are served; 40,000 keys took 0.5 s). */
const MAX_FILE = 256 * 1024

/** What each of the YAML parser's errors means, without quoting any of the file (the parser's messages do). */
const YAML_PROBLEMS: Readonly<Record<string, string>> = {
  ALIAS_PROPS: 'an alias (*name) cannot have a tag or an anchor',
  BAD_ALIAS: 'an alias (*name) that names no anchor',
  BAD_DIRECTIVE: 'a directive (a line starting with %) that YAML does not have',
  BAD_DQ_ESCAPE: 'a "quoted" value has a \\ escape that YAML does not have (quote it with \' instead)',
  BAD_INDENT: 'the indentation is off: items of one mapping or list start in one column',
  BAD_PROP_ORDER: 'a tag (!x) or anchor (&x) is not where YAML expects it',
  BAD_SCALAR_START: 'a plain value cannot start with @, `, % or another reserved character: quote it',
  BLOCK_AS_IMPLICIT_KEY: 'a key: value mapping inside another on one line (a value with ": " in it needs quotes)',
  BLOCK_IN_FLOW: 'an indented block inside [ ] or { }',
  DUPLICATE_KEY: 'a key that this mapping already has',
  KEY_OVER_1024_CHARS: 'a key longer than 1024 characters',
  MISSING_CHAR: 'a quote or bracket is not closed',
  MULTILINE_IMPLICIT_KEY: 'a key that runs over several lines',
  MULTIPLE_ANCHORS: 'two anchors (&x) on one value',
  MULTIPLE_DOCS: 'more than one document (---): one configuration per file',
  MULTIPLE_TAGS: 'two tags (!x) on one value',
  NON_STRING_KEY: 'a key that is not a plain word',
  RESOURCE_EXHAUSTION: 'aliases that expand to too much',
  TAB_AS_INDENT: 'a tab used as indentation (use spaces)',
  TAG_RESOLVE_FAILED: 'a tag (!x) that YAML does not know: quote a value that starts with !',
  UNEXPECTED_TOKEN: 'something YAML does not expect here (after | or >, only a digit, + or - may follow; quote a value that starts with one)',
  BAD_COLLECTION_TYPE: 'a tag (!x) that does not fit this kind of value'
}

export function readConfigFile (path: string): FileSettings {
  const result: FileSettings = { values: {}, origins: {}, credentialSets: [], routes: [], problems: [], meant: [], parsed: false }
  let text: string
  try {
    // Bounded before it is parsed: a configuration is a few KiB, and a reload parses it while requests are served.
    if (statSync(path).size > MAX_FILE) {
      result.problems.push(`--config ${path}: larger than ${MAX_FILE / 1024} KiB, which no configuration needs`)
      return result
    }
    text = readFileSync(path, 'utf8')
  } catch (error) {
    result.problems.push(`--config ${path}: cannot read it (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
    return result
  }
  const { LineCounter, parseDocument, visit, isMap, isScalar } = yaml()
  const lines = new LineCounter()
  // The parser's own duplicate-key check compares each key with every other (13 s for 40,000 keys): a set per mapping instead.
  const document = parseDocument(text, { lineCounter: lines, uniqueKeys: false })
  const at = (node: Node | null | undefined): string => {
    const { line } = lines.linePos(node?.range?.[0] ?? 0)
    return `${path}:${line}`
  }
  // Warnings too (an unknown tag or directive): a file is read as written, or not at all.
  const errors = [...document.errors, ...document.warnings]
  for (const error of errors) {
    // In the proxy's words, by the parser's code: its own message and excerpt quote the file, which may hold a secret.
    const [line = 0, column = 0] = [error.linePos?.[0].line, error.linePos?.[0].col]
    result.problems.push(`${path}:${line}:${column}: ${YAML_PROBLEMS[error.code] ?? 'this is not valid YAML here'}`)
  }
  const duplicates: Array<{ line: number, col: number }> = []
  if (errors.length === 0) {
    visit(document, {
      Map: (_key, map) => {
        if (!isMap(map)) return
        const seen = new Set<unknown>()
        for (const pair of map.items) {
          const key = isScalar(pair.key) ? pair.key.value : pair.key
          if (!seen.has(key)) {
            seen.add(key)
            continue
          }
          duplicates.push(lines.linePos((pair.key as Node | null)?.range?.[0] ?? 0))
        }
      }
    })
  }
  // In the file's order (the walk meets an outer mapping's keys before an inner one's).
  for (const { line, col } of duplicates.sort((a, b) => a.line - b.line || a.col - b.col)) result.problems.push(`${path}:${line}:${col}: ${YAML_PROBLEMS.DUPLICATE_KEY as string}`)
  if (errors.length > 0 || duplicates.length > 0) return result
  result.parsed = true
  const root = document.contents
  if (root === null) return result
  if (!yaml().isMap(root)) {
    result.problems.push(`${path}: expected a mapping of settings (key: value), one per line`)
    return result
  }
  for (const pair of root.items) {
    const keyNode = pair.key as Node
    const key = yaml().isScalar(keyNode) ? String(keyNode.value) : ''
    if (key === 'credentials') readCredentialSets(pair.value as Node | null, `${at(keyNode)}: credentials`, at, result)
    else if (key === 'routes') readRoutes(pair.value as Node | null, `${at(keyNode)}: routes`, at, result)
    else readSetting(key, pair.value as Node | null, `${at(keyNode)}: ${key}`, result, result.problems, undefined)
  }
  return result
}

/** One `key: value` into `into`, checked against the settings (all of them, or only `allowed`). */
function readSetting (key: string, node: Node | null, where: string, into: { values: Record<string, string>, origins: Record<string, string>, meant: string[] },
  problems: string[], allowed: ReadonlySet<string> | undefined): void {
  const setting = SETTING_OF.get(key)
  if (setting === undefined || (allowed !== undefined && !allowed.has(setting))) {
    const known = [...SETTING_OF].filter(([, name]) => allowed === undefined || allowed.has(name)).map(([written]) => written)
    const match = setting === undefined ? closest(key, known) : undefined
    if (match !== undefined) into.meant.push(SETTING_OF.get(match) as string)
    problems.push(`${where}: ${setting === undefined ? 'unknown setting' : 'not a setting of a credential set (it belongs at the top level)'}${match === undefined ? '' : `; did you mean ${match}?`}`)
    return
  }
  const value = valueOf(setting, node)
  if (value === undefined) {
    // Given, in a shape it cannot have: named here, and not also as missing.
    into.meant.push(setting)
    problems.push(`${where}: expected ${LISTS.has(setting) ? 'a value or a list of values' : 'a single value'}${setting === 'CLUSTERS' ? ', or a mapping of names to URLs' : setting === 'TOKEN_PARAMS' ? ', or a mapping' : ''}`)
    return
  }
  if (value === null) return
  into.values[setting] = value
  into.origins[setting] = where
}

const SET_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/

function readCredentialSets (node: Node | null, where: string, at: (node: Node | null | undefined) => string, result: FileSettings): void {
  if (!yaml().isMap(node)) {
    result.problems.push(`${where}: expected a mapping of names to credential sets`)
    return
  }
  for (const pair of node.items) {
    const name = yaml().isScalar(pair.key) ? String(pair.key.value) : ''
    const setWhere = `${at(pair.key as Node)}: credentials.${name}`
    if (!SET_NAME.test(name)) {
      result.problems.push(`${setWhere}: a credential set's name is letters, digits, ".", "_" or "-"`)
      continue
    }
    if (!yaml().isMap(pair.value)) {
      result.problems.push(`${setWhere}: expected a mapping of settings`)
      continue
    }
    const set: CredentialSetEntry = { name, at: at(pair.key as Node), values: {}, origins: {}, meant: [] }
    for (const item of pair.value.items) {
      const key = yaml().isScalar(item.key) ? String(item.key.value) : ''
      readSetting(key, item.value as Node | null, `${at(item.key as Node)}: credentials.${name}.${key}`, set, result.problems, CREDENTIAL_SETTINGS)
    }
    result.credentialSets.push(set)
  }
}

function readRoutes (node: Node | null, where: string, at: (node: Node | null | undefined) => string, result: FileSettings): void {
  if (!yaml().isSeq(node)) {
    result.problems.push(`${where}: expected a list of routes (- prefix: …, upstream: …, credentials: …)`)
    return
  }
  for (const [index, item] of node.items.entries()) {
    const entryWhere = `${at(item as Node)}: routes[${index}]`
    if (!yaml().isMap(item)) {
      result.problems.push(`${entryWhere}: expected a mapping (prefix, upstream, credentials)`)
      continue
    }
    const route: RouteEntry = { values: {}, origins: {}, at: entryWhere }
    for (const pair of item.items) {
      const key = yaml().isScalar(pair.key) ? String(pair.key.value) : ''
      const keyWhere = `${at(pair.key as Node)}: routes[${index}].${key}`
      const value = key === 'clusters'
        ? valueOf('CLUSTERS', pair.value as Node | null) ?? undefined
        : yaml().isScalar(pair.value)
          ? scalar(pair.value.value)
          : ROUTE_LISTS.has(key) && yaml().isSeq(pair.value) ? joined(pair.value.items) : undefined
      if (!ROUTE_KEYS.includes(key)) result.problems.push(`${keyWhere}: not a key of a route (${ROUTE_KEYS.join(', ')})${didYouMean(key, ROUTE_KEYS)}`)
      else if (value === undefined) result.problems.push(`${keyWhere}: expected ${key === 'clusters' ? 'auto, or a mapping of names to URLs' : 'a single value'}`)
      else {
        route.values[key] = value
        route.origins[key] = keyWhere
      }
    }
    result.routes.push(route)
  }
}

/** The variable's string for a node; `null` for an empty value (unset); undefined when its shape is wrong. */
function valueOf (setting: string, node: Node | null): string | null | undefined {
  if (node === null || (yaml().isScalar(node) && node.value === null)) return null
  if (yaml().isScalar(node)) return scalar(node.value)
  if (yaml().isSeq(node) && LISTS.has(setting)) {
    return joined(node.items)
  }
  if (yaml().isMap(node) && (setting === 'CLUSTERS' || setting === 'TOKEN_PARAMS')) {
    const entries = node.items.map((pair) => [yaml().isScalar(pair.key) ? scalar(pair.key.value) : undefined, yaml().isScalar(pair.value) ? scalar(pair.value.value) : undefined])
    if (entries.some(([name, value]) => name === undefined || value === undefined)) return undefined
    return setting === 'CLUSTERS'
      ? entries.map(([name, value]) => `${name as string}=${value as string}`).join(',')
      : new URLSearchParams(entries as Array<[string, string]>).toString()
  }
  return undefined
}

/** A sequence of scalars as a comma-separated list; undefined when an item is not a scalar. */
function joined (items: readonly unknown[]): string | undefined {
  const values = items.map((item) => yaml().isScalar(item) ? scalar(item.value) : undefined)
  return values.every((value) => value !== undefined) ? values.join(',') : undefined
}

function scalar (value: unknown): string | undefined {
  return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' ? String(value) : undefined
}
