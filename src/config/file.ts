import { readFileSync } from 'node:fs'
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node } from 'yaml'
import { didYouMean } from '../suggest.js'
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
  readonly problems: string[]
}

/** A setting's key in the file: `CLIENT_SECRET_FILE` → `clientSecretFile`. */
export function fileKey (setting: string): string {
  return setting.toLowerCase().replace(/_([a-z])/g, (_match, letter: string) => letter.toUpperCase())
}

const SETTING_OF = new Map(Object.keys(SETTINGS).map((setting) => [fileKey(setting), setting]))
/** Settings that hold a comma-separated list: a YAML sequence is joined. */
const LISTS = new Set(['ALLOWED_HOSTS', 'ALLOWED_ORIGINS', 'ALLOW_PATHS', 'DENY_PATHS', 'CLUSTERS'])

export function readConfigFile (path: string): FileSettings {
  const result: FileSettings = { values: {}, origins: {}, problems: [] }
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (error) {
    result.problems.push(`--config ${path}: cannot read it (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
    return result
  }
  const lines = new LineCounter()
  const document = parseDocument(text, { lineCounter: lines, uniqueKeys: true })
  const at = (node: Node | null | undefined): string => {
    const { line } = lines.linePos(node?.range?.[0] ?? 0)
    return `${path}:${line}`
  }
  for (const error of document.errors) {
    // The parser's first line only: the excerpt after it quotes the file, which may hold a secret.
    const [line = 0, column = 0] = [error.linePos?.[0].line, error.linePos?.[0].col]
    result.problems.push(`${path}:${line}:${column}: ${error.message.split('\n')[0]?.replace(/ at line \d+, column \d+:?$/, '')}`)
  }
  if (document.errors.length > 0) return result
  const root = document.contents
  if (root === null) return result
  if (!isMap(root)) {
    result.problems.push(`${path}: expected a mapping of settings (key: value), one per line`)
    return result
  }
  for (const pair of root.items) {
    const keyNode = pair.key as Node
    const key = isScalar(keyNode) ? String(keyNode.value) : ''
    const where = `${at(keyNode)}: ${key}`
    const setting = SETTING_OF.get(key)
    if (setting === undefined) {
      result.problems.push(`${where}: unknown setting${didYouMean(key, SETTING_OF.keys())}`)
      continue
    }
    const value = valueOf(setting, pair.value as Node | null)
    if (value === undefined) {
      result.problems.push(`${where}: expected ${LISTS.has(setting) ? 'a value or a list of values' : 'a single value'}${setting === 'CLUSTERS' ? ', or a mapping of names to URLs' : setting === 'TOKEN_PARAMS' ? ', or a mapping' : ''}`)
      continue
    }
    if (value === null) continue
    result.values[setting] = value
    result.origins[setting] = where
  }
  return result
}

/** The variable's string for a node; `null` for an empty value (unset); undefined when its shape is wrong. */
function valueOf (setting: string, node: Node | null): string | null | undefined {
  if (node === null || (isScalar(node) && node.value === null)) return null
  if (isScalar(node)) return scalar(node.value)
  if (isSeq(node) && LISTS.has(setting)) {
    const items = node.items.map((item) => isScalar(item) ? scalar(item.value) : undefined)
    return items.every((item) => item !== undefined) ? items.join(',') : undefined
  }
  if (isMap(node) && (setting === 'CLUSTERS' || setting === 'TOKEN_PARAMS')) {
    const entries = node.items.map((pair) => [isScalar(pair.key) ? scalar(pair.key.value) : undefined, isScalar(pair.value) ? scalar(pair.value.value) : undefined])
    if (entries.some(([name, value]) => name === undefined || value === undefined)) return undefined
    return setting === 'CLUSTERS'
      ? entries.map(([name, value]) => `${name as string}=${value as string}`).join(',')
      : new URLSearchParams(entries as Array<[string, string]>).toString()
  }
  return undefined
}

function scalar (value: unknown): string | undefined {
  return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' ? String(value) : undefined
}
