/** The proxy's own endpoints: `/-/ready`, `/-/metrics`. */
export const OWN_PREFIX = '/-/'
/** Where clusters are served: `/clusters/<name>/…`. */
export const CLUSTERS_PREFIX = '/clusters/'
/** The first path segments the router gives a meaning to; the guard refuses them encoded. */
export const ROUTE_SEGMENTS: ReadonlySet<string> = new Set(['clusters', '-'])

/** Whether a route of the configuration file may not be served at `prefix`: under the proxy's own paths or the clusters'. */
export function reservedPrefix (prefix: string): boolean {
  return [...ROUTE_SEGMENTS].some((segment) => prefix === `/${segment}` || prefix.startsWith(`/${segment}/`))
}
