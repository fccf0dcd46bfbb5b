import envSchema from 'env-schema'
import { interpret } from './config/rules.js'
import { firstSetup, SCHEMA, SETTINGS } from './config/settings.js'
import { CREDENTIAL_SETTINGS, type CredentialSetEntry, fileKey, type RouteEntry } from './config/file.js'
import type { Config, PrefixRoute } from './config/types.js'
import { discoversClusters, list, parseClusters, parseHttpUrl } from './config/values.js'
import type { TokenSettings } from './oauth/settings.js'
import { PREFIX } from './prefix.js'
import { reservedPrefix } from './reserved-paths.js'
import { defaultSet, routeName } from './routes.js'
import { closest, didYouMean } from './suggest.js'
import { asWritten, ConfigError, type LoadOptions, readSettings } from './config/read.js'

/**
 * The configuration: the result's types and `loadConfig`. Reading and schema checks
 * are here; the settings table is `config/settings.ts`, single values are parsed in
 * `config/values.ts`, cross-field rules live in `config/rules.ts`.
 */
export { FLAGS } from './config/settings.js'
export type { Config, PrefixRoute } from './config/types.js'
export { isLoopback, parseAddress } from './config/values.js'
export type { ClientAuth, Client, Credentials, Flavour, GrantName, Login, TokenSettings } from './oauth/settings.js'
export { PREFIX } from './prefix.js'
export { ConfigError, type LoadOptions, type Listening, loadListening } from './config/read.js'

export function loadConfig (options: LoadOptions = {}): Config {
  const { data, origins, problems: fileProblems, file } = readSettings(options)
  // A file that cannot be read or parsed has nothing more to check; one that parsed has its problems named with the rest.
  if (file !== undefined && !file.parsed) throw new ConfigError(fileProblems)
  const sets = file?.credentialSets ?? []
  if (Object.keys(data).length === 0 && sets.length === 0 && fileProblems.length === 0) throw new ConfigError(firstSetup(), true)
  const forwarding = options.forwarding ?? true
  if (sets.length === 0 && (file?.routes.length ?? 0) === 0) {
    const { config, problems } = evaluate(data, origins, { forwarding, meant: file?.meant })
    const named = options.configFile === undefined ? problems : problems.map((line) => missingInFile(line, options.configFile as string, data))
    if (fileProblems.length > 0 || problems.length > 0 || config === undefined) throw new ConfigError(inFileOrder([...fileProblems, ...named]))
    return config
  }

  // Named credential sets: each checked as a configuration of its own; the top level keeps the listener and the policy.
  const problems: string[] = [...fileProblems]
  for (const key of Object.keys(data)) {
    const name = key.slice(PREFIX.length)
    if (CREDENTIAL_SETTINGS.has(name) || name === 'CLUSTERS') {
      problems.push(`${origins[name] ?? key}: with credential sets, credentials and upstreams belong to a set under credentials: and to routes:`)
    }
  }
  const named = new Map<string, { token: TokenSettings, upstream: URL | undefined }>()
  for (const set of sets) {
    const setData = Object.fromEntries(Object.entries(set.values).map(([name, value]) => [PREFIX + name, value]))
    const result = evaluate(setData, set.origins, { forwarding: false, meant: set.meant })
    problems.push(...result.problems.map((line) => inSet(line, set)))
    if (result.config !== undefined) named.set(set.name, { token: result.config.tokenSettings, upstream: result.config.upstream })
  }
  // A route naming a set whose own problems are named above is not a further problem.
  const routes = prefixRoutesOf(file?.routes ?? [], named, new Set(sets.map((set) => set.name)), problems)
  if (forwarding && (file?.routes.length ?? 0) === 0) problems.push(`${options.configFile ?? 'the configuration'}: routes: required with credential sets (- prefix: /api, credentials: NAME)`)
  const first = named.size === 0 ? undefined : named.get(defaultSet({ credentialSets: named }))
  // The top level is checked whatever became of the sets: its own problems are named too.
  const top = evaluate(data, origins, { forwarding: false, token: first?.token ?? ({} as TokenSettings), meant: file?.meant })
  problems.push(...top.problems)
  if (problems.length > 0) throw new ConfigError(inFileOrder(problems))
  if (first === undefined || top.config === undefined) throw new ConfigError([`${options.configFile ?? 'the configuration'}: credentials: no usable credential set`])
  return {
    ...top.config,
    credentialSets: new Map([...named].map(([name, { token }]) => [name, token])),
    prefixRoutes: routes
  }
}

/**
 * A problem of a credential set as the file names it: a setting it lacks at the set's
 * line (`credentials.north.clientSecret: required …`), and every variable it mentions
 * by its key in the file.
 */
function inSet (line: string, set: CredentialSetEntry): string {
  const keyed = (text: string): string => text.replace(new RegExp(`${PREFIX}([A-Z_]+)`, 'g'), (_match, name: string) => `credentials.${set.name}.${fileKey(name)}`)
  return line.startsWith(PREFIX) ? `${set.at}: ${keyed(line)}` : keyed(line)
}

/** A setting missing from a configuration given by a file, named as the file would hold it (`proxy.yaml: clientId: required …`). */
function missingInFile (line: string, path: string, data: Readonly<Record<string, string>>): string {
  const setting = new RegExp(`^(${PREFIX}[A-Z_]+)(?::| \\()`).exec(line)?.[1]
  if (setting === undefined || setting in data) return line
  return `${path}: ${line.replace(new RegExp(`${PREFIX}([A-Z_]+)`, 'g'), (_match, name: string) => fileKey(name))}`
}

/** Problems in the order of the file's lines (those of the environment and flags first, as found): each where it is written. */
function inFileOrder (problems: readonly string[]): string[] {
  const lineOf = (problem: string): number => Number(/^[^\s]*?:(\d+)(?::\d+)?: /.exec(problem)?.[1] ?? 0)
  return [...new Set(problems)].map((problem, index) => ({ problem, index, line: lineOf(problem) }))
    .sort((a, b) => a.line - b.line || a.index - b.index)
    .map(({ problem }) => problem)
}

const ROUTE_PREFIX = /^\/(?:[A-Za-z0-9._~-]+(?:\/[A-Za-z0-9._~-]+)*)?$/

/** The routes of `--config`'s `routes:`: a prefix, an upstream (else its set's), the credential set it uses. */
function prefixRoutesOf (entries: readonly RouteEntry[], sets: ReadonlyMap<string, { token: TokenSettings, upstream: URL | undefined }>, declared: ReadonlySet<string>, problems: string[]): PrefixRoute[] {
  const routes: PrefixRoute[] = []
  for (const entry of entries) {
    const { values, origins } = entry
    const where = (key: string): string => origins[key] ?? `${entry.at}.${key}`
    const prefix = values.prefix
    if (prefix === undefined) {
      problems.push(`${where('prefix')}: required (where the route is served, e.g. /runai)`)
      continue
    }
    if (!ROUTE_PREFIX.test(prefix) || reservedPrefix(prefix)) {
      problems.push(`${where('prefix')}: a path of letters, digits and ".", "_", "~", "-" segments, not under /-/ or /clusters/`)
      continue
    }
    const name = values.name ?? routeName(prefix)
    const set = values.credentials === undefined ? undefined : sets.get(values.credentials)
    if (set === undefined) {
      // A set that is declared but has problems of its own: those are named where the set is.
      if (values.credentials !== undefined && declared.has(values.credentials)) continue
      problems.push(values.credentials === undefined
        ? `${where('credentials')}: required (the name of a credential set under credentials:)`
        : `${where('credentials')}: names no credential set (the sets are ${[...declared].join(', ') || 'none'})${didYouMean(values.credentials, declared)}`)
      continue
    }
    const upstream = values.upstream === undefined ? set.upstream : parseHttpUrl(values.upstream, where('upstream'), problems)
    if (upstream === undefined) {
      if (values.upstream === undefined) problems.push(`${where('upstream')}: required (or an upstream in credential set ${values.credentials as string})`)
      continue
    }
    if (routes.some((route) => route.prefix === prefix || route.name === name)) {
      problems.push(`${where('prefix')}: another route has this prefix or name`)
      continue
    }
    const readOnly = values.readOnly === undefined || values.readOnly === 'false' ? false : values.readOnly === 'true' ? true : undefined
    if (readOnly === undefined) problems.push(`${where('readOnly')}: must be true or false`)
    // As at the top level: Run:ai lists its clusters unless the route names them.
    const clusters = parseClusters(values.clusters, problems, where('clusters'))
    const discoverClusters = discoversClusters(values.clusters, set.token.flavour)
    routes.push({ name, prefix, upstream, set: values.credentials as string, readOnly: readOnly ?? true, allowPaths: list(values.allowPaths), denyPaths: list(values.denyPaths), clusters, discoverClusters })
  }
  return routes
}

/** One configuration's settings checked: unknown names, the schema, the rules; problems named as written. */
function evaluate (data: Record<string, string>, origins: Readonly<Record<string, string>>, input: { forwarding: boolean, token?: TokenSettings, meant?: readonly string[] }): { config: Config | undefined, problems: string[] } {
  const ours = Object.keys(data)
  const problems: string[] = []
  // A misspelt setting (here, or a key of the file) is reported once: not also as the setting it was meant to be, missing.
  const meant: string[] = (input.meant ?? []).map((setting) => `${PREFIX}${setting}: required`)
  for (const key of ours) {
    if (!(key.slice(PREFIX.length) in SETTINGS)) {
      const match = closest(key, Object.keys(SETTINGS).map((name) => PREFIX + name))
      problems.push(`${key}: unknown setting${match === undefined ? '' : `; did you mean ${match}?`}`)
      if (match !== undefined) meant.push(`${match}: required`)
      delete data[key]
    }
  }
  let raw: Record<string, unknown>
  const invalid = new Set<string>()
  try {
    raw = envSchema({ schema: VALIDATED, data, env: false })
  } catch (error) {
    const found = schemaProblems(error, data)
    problems.push(...found.map(([, line]) => line))
    // Check the rest too, so that one run reports every problem.
    for (const [name] of found) {
      delete data[name]
      invalid.add(name.slice(PREFIX.length))
    }
    raw = envSchema({ schema: VALIDATED, data, env: false })
  }
  const given = new Set(Object.keys(data).map((key) => key.slice(PREFIX.length)))
  const config = interpret(raw, { forwarding: input.forwarding, given, invalid, token: input.token }, problems)
  // A setting given but refused is not also missing: its "required" line would be a consequence, not a problem.
  const refused = new Set(problems.filter((line) => !/^\S+: required\b/.test(line)).map((line) => /^(\S+?)(?::| \()/.exec(line)?.[1]))
  const reported = problems.filter((line) => !meant.some((start) => line.startsWith(start)) && !(/^\S+: required\b/.test(line) && refused.has(/^(\S+?):/.exec(line)?.[1])))
  return { config, problems: asWritten(reported, origins) }
}

/**
 * The one schema object every check validates with: Ajv (env-schema's shared instance)
 * caches what it compiles by the schema object, so a copy per check (as every reload
 * made) compiled and kept another 60 KB validator each time. env-schema sets
 * `additionalProperties: false` on it, as it already is.
 */
const VALIDATED = { ...SCHEMA, additionalProperties: false }

interface AjvProblem { instancePath?: string, message?: string, params?: { allowedValues?: unknown[] } }

/** [variable, line] for each schema violation; a value close to an allowed one gets "did you mean". */
function schemaProblems (error: unknown, data: Readonly<Record<string, string>>): Array<[string, string]> {
  const list = (error as { errors?: AjvProblem[] }).errors ?? []
  return list.map((problem) => {
    const name = (problem.instancePath ?? '').replace(/^\//, '')
    const allowed = problem.params?.allowedValues
    const suffix = Array.isArray(allowed) ? `: ${allowed.join(', ')}${didYouMean(data[name] ?? '', allowed.map(String))}` : ''
    return [name, `${name}: ${problem.message ?? 'invalid'}${suffix}`]
  })
}

