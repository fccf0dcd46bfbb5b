import type { Config } from './config/types.js'
import { ProxyError } from './errors.js'
import { CLUSTERS_PREFIX, OWN_PREFIX } from './reserved-paths.js'
import { someOf } from './suggest.js'
import { trimSlashes } from './url.js'

export { CLUSTERS_PREFIX, OWN_PREFIX, ROUTE_SEGMENTS } from './reserved-paths.js'

/**
 * The route plan: which routes a configuration serves, where its clusters are and
 * who lists them, which credential set is the default. Every part of the proxy that
 * needs one of these decisions asks here.
 */

/** The name of the route at `/`: the admin API of a control plane, or whatever the one upstream is. */
export const ADMIN_ROUTE = 'admin'

/** The name of a route of the configuration file that names none: `admin` at `/`, else its prefix (`/runai/eu` → `runai-eu`). */
export function routeName (prefix: string): string {
  return prefix === '/' ? ADMIN_ROUTE : prefix.slice(1).replace(/\//g, '-')
}

/** The credential set of the top level (its routes, its clusters, `TOKEN_FILE`): the first (the only one without credential sets). */
export function defaultSet (config: { readonly credentialSets: ReadonlyMap<string, unknown> }): string {
  return config.credentialSets.keys().next().value as string
}

/** Clusters served under one root: configured ones, and the control plane that lists more, with the set whose tokens read the list. */
export interface ClusterSource {
  readonly root: string
  /** The route they belong to (their routes are named `<route>/<cluster>`); none at the top level. */
  readonly route: string | undefined
  readonly set: string
  readonly listed: ReadonlyMap<string, URL>
  /** The Run:ai control plane that lists them (`clusters: auto`, or a Run:ai set without `clusters`). */
  readonly controlPlane: URL | undefined
}

/** Every root that has clusters, configured or discovered: `/clusters/`, and under each route that has its own. */
export function clusterSources (config: Pick<Config, 'clusters' | 'upstream' | 'discoverClusters' | 'prefixRoutes' | 'credentialSets'>): ClusterSource[] {
  const top: ClusterSource = { root: CLUSTERS_PREFIX, route: undefined, set: defaultSet(config), listed: config.clusters, controlPlane: config.discoverClusters ? config.upstream : undefined }
  const routes = config.prefixRoutes.map((route): ClusterSource => ({
    root: clusterRoot(route.prefix), route: route.name, set: route.set, listed: route.clusters, controlPlane: route.discoverClusters ? route.upstream : undefined
  }))
  return [top, ...routes].filter((source) => source.listed.size > 0 || source.controlPlane !== undefined)
}

/** One upstream, where it is served, and the credential set whose tokens it gets. */
export interface Route {
  readonly name: string
  readonly prefix: string
  readonly upstream: URL
  /** The credential set whose tokens it gets. */
  readonly set: string
}

/**
 * The routes of a configuration: each cluster at `/clusters/<name>`, the routes of
 * the configuration file at their prefixes (a route's own clusters at
 * `<prefix>/clusters/<name>`, named `<route>/<name>`), the admin API at `/`.
 */
export function routesOf (config: Pick<Config, 'clusters' | 'upstream' | 'prefixRoutes' | 'credentialSets'>): Route[] {
  const set = defaultSet(config)
  const routes: Route[] = [...config.clusters].map(([name, upstream]) => ({ name, prefix: `${CLUSTERS_PREFIX}${name}`, upstream, set }))
  for (const { name, prefix, upstream, set: own, clusters } of config.prefixRoutes) {
    for (const [cluster, url] of clusters) routes.push({ name: `${name}/${cluster}`, prefix: `${clusterRoot(prefix)}${cluster}`, upstream: url, set: own })
    routes.push({ name, prefix, upstream, set: own })
  }
  if (config.upstream !== undefined && config.prefixRoutes.length === 0) routes.push({ name: ADMIN_ROUTE, prefix: '/', upstream: config.upstream, set })
  return routes
}

/** Where the clusters of the route at `prefix` are served: `/clusters/` at the top level. */
export function clusterRoot (prefix: string): string {
  return prefix === '/' ? CLUSTERS_PREFIX : `${prefix}${CLUSTERS_PREFIX}`
}

/** Where a configuration serves clusters: `/clusters/`, and under each route that has clusters of its own. */
export function clusterRootsOf (config: Pick<Config, 'clusters' | 'upstream' | 'discoverClusters' | 'prefixRoutes' | 'credentialSets'>): string[] {
  return [CLUSTERS_PREFIX, ...clusterSources(config).map((source) => source.root).filter((root) => root !== CLUSTERS_PREFIX)]
}

/**
 * The clusters served under one root, by name (and discovered ones by uuid too), in
 * lower case: one cluster whichever name or spelling reaches it (names are unique
 * without case, as configuration and discovery check).
 */
interface Namespace<R extends Route> {
  readonly root: string
  clusters: ReadonlyMap<string, R>
  /** Which clusters there are, for the answer to an unknown one. */
  known: string
}

/** A route and the path its upstream is asked for: the upstream's base path, the rest of the target, the query as sent. */
export interface Resolved<R extends Route> { readonly route: R, readonly path: string }

/**
 * The one answer to "which route serves this raw request target, and what is the
 * upstream path", built once at start-up, for every part that needs it: the
 * WebSocket tunnel, the unknown-cluster answer, `Location` rewriting. (HTTP
 * requests are routed by Fastify on the same prefixes, one registration per route.)
 */
export class RouteTable<R extends Route> {
  /** The routes configured (each registered with Fastify); discovered clusters come and go apart from them. */
  readonly routes: readonly R[]
  /** Where clusters are served, longest root first. */
  readonly #namespaces: ReadonlyArray<Namespace<R>>
  readonly #admin: R | undefined
  /** Routes at other prefixes (the configuration file's), longest prefix first. */
  readonly #prefixed: readonly R[]

  constructor (routes: readonly R[], roots: readonly string[] = [CLUSTERS_PREFIX]) {
    this.routes = routes
    this.#namespaces = [...roots].sort((a, b) => b.length - a.length).map((root) => {
      const clusters = new Map<string, R>()
      for (const route of routes) {
        const name = route.prefix.startsWith(root) ? route.prefix.slice(root.length) : ''
        if (name !== '' && !name.includes('/')) clusters.set(name.toLowerCase(), route)
      }
      return { root, clusters, known: clusters.size === 0 ? 'no clusters are configured' : `configured: ${someOf([...clusters.values()].map((route) => route.prefix.slice(root.length)))}` }
    })
    const clusters = new Set(this.#namespaces.flatMap(({ clusters }) => [...clusters.values()]))
    this.#admin = routes.find((route) => route.prefix === '/')
    this.#prefixed = routes.filter((route) => route.prefix !== '/' && !clusters.has(route)).sort((a, b) => b.prefix.length - a.prefix.length)
  }

  /** Discovered clusters served under `root`, replacing the previous ones at once: each served by name, and by uuid as well. */
  replaceClusters (root: string, clusters: ReadonlyArray<{ readonly route: R, readonly uuid: string }>): void {
    const namespace = this.#namespaces.find((namespace) => namespace.root === root)
    if (namespace === undefined) return
    const map = new Map<string, R>()
    for (const { route, uuid } of clusters) map.set(route.prefix.slice(root.length).toLowerCase(), route).set(uuid.toLowerCase(), route)
    namespace.clusters = map
    namespace.known = clusters.length === 0 ? 'the control plane lists no cluster that can be served' : `known: ${someOf(clusters.map(({ route }) => route.prefix.slice(root.length)))}`
  }

  /** The names of the routes served now, in the configuration's order, for `/-/ready`. */
  names (): string[] {
    const clusters = new Set(this.#namespaces.flatMap(({ clusters }) => [...clusters.values()].map((route) => route.name)))
    const prefixed = this.routes.filter((route) => this.#prefixed.includes(route)).map((route) => route.name)
    return [...(this.#admin === undefined ? [] : [this.#admin.name]), ...prefixed, ...clusters]
  }

  resolve (target: string): Resolved<R> | ProxyError {
    if (target.startsWith(OWN_PREFIX)) return new ProxyError('not_found', 'the proxy has no such endpoint')
    for (const namespace of this.#namespaces) {
      if (!target.startsWith(namespace.root)) continue
      const rest = target.slice(namespace.root.length)
      const end = rest.search(/[/?]/)
      const name = end === -1 ? rest : rest.slice(0, end)
      const route = namespace.clusters.get(name.toLowerCase())
      if (route === undefined) return this.unknownCluster(namespace.root, name)
      const tail = end === -1 ? '/' : rest.slice(end)
      return { route, path: basePath(route) + (tail.startsWith('?') ? `/${tail}` : tail) }
    }
    for (const route of this.#prefixed) {
      if (!target.startsWith(route.prefix)) continue
      const rest = target.slice(route.prefix.length)
      if (rest === '' || rest[0] === '/' || rest[0] === '?') return { route, path: basePath(route) + (rest === '' || rest[0] === '?' ? `/${rest}` : rest) }
    }
    if (this.#admin === undefined) return new ProxyError('not_found', 'nothing is served at this path (no route has this prefix)')
    return { route: this.#admin, path: basePath(this.#admin) + target }
  }

  /**
   * A decoded path with its cluster named as the cluster is named, whichever name or
   * spelling reached it (its uuid, another case): the path that path rules judge.
   * A path under no cluster, or under one not known (yet), is returned as it is.
   */
  canonical (path: string): string {
    for (const { root, clusters } of this.#namespaces) {
      if (!path.startsWith(root)) continue
      const end = path.indexOf('/', root.length)
      const segment = path.slice(root.length, end === -1 ? undefined : end)
      const route = clusters.get(segment.toLowerCase())
      if (route === undefined) return path
      const name = route.prefix.slice(root.length)
      return name === segment ? path : root + name + (end === -1 ? '' : path.slice(end))
    }
    return path
  }

  /** The cluster a `/<name>/…` target probably meant, when `<name>` is a cluster of the top level: `/clusters/<name>/…`. */
  clusterHint (target: string): string | undefined {
    const end = target.slice(1).search(/[/?]/)
    const first = end === -1 ? target.slice(1) : target.slice(1, 1 + end)
    const top = this.#namespaces.find(({ root }) => root === CLUSTERS_PREFIX)
    return top?.clusters.has(first.toLowerCase()) === true ? `${CLUSTERS_PREFIX}${first}/…` : undefined
  }

  /** The answer to a `<root><name>/…` that no route serves: never the control plane's API. */
  unknownCluster (root: string, name: string): ProxyError {
    const known = this.#namespaces.find((namespace) => namespace.root === root)?.known ?? 'no clusters are configured'
    return new ProxyError('unknown_cluster', `no cluster named ${JSON.stringify(name.slice(0, 64))} is configured${root === CLUSTERS_PREFIX ? '' : ` under ${root}`} (${known})`)
  }
}

/** The upstream's path without its trailing slashes: `''` for an upstream at its root. */
export function basePath (route: Route): string {
  return trimSlashes(route.upstream.pathname)
}

/** Maps an absolute `Location` on the route's upstream back to the proxy's own route; anything else is left alone. */
export function locationRewriter (route: Route): (location: string) => string {
  const base = route.upstream.origin + basePath(route)
  const prefix = route.prefix === '/' ? '' : route.prefix
  return (location) => {
    if (!location.startsWith(base)) return location
    const rest = location.slice(base.length)
    if (rest !== '' && !'/?#'.includes(rest[0] as string)) return location
    return prefix + (rest.startsWith('/') ? rest : `/${rest}`)
  }
}
