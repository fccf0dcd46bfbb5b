import type { SecretSource } from '../secret.js'
import type { TokenSettings } from '../oauth/settings.js'

/** What a configuration is, once checked: `loadConfig` (config.ts) builds it, the rest of the proxy reads it. */

/** A route of the configuration file: served at `prefix`, forwarded to `upstream` with the tokens of credential set `credentials`. */
export interface PrefixRoute {
  readonly name: string
  readonly prefix: string
  readonly upstream: URL
  /** The credential set whose tokens it gets (the file's `credentials:` key). */
  readonly set: string
  /** The route's own policy, besides the top level's: paths are those below its prefix. */
  readonly readOnly: boolean
  readonly allowPaths: readonly string[]
  readonly denyPaths: readonly string[]
  /** The route's own clusters, served at `<prefix>/clusters/<name>/…` with the route's credential set. */
  readonly clusters: ReadonlyMap<string, URL>
  /** Clusters read from the Run:ai control plane at the route's upstream (`clusters: auto`, or a Run:ai set without `clusters`). */
  readonly discoverClusters: boolean
}

export interface Config {
  /** The settings of the credential set the top level uses (the default set, or `--credentials NAME`'s). */
  readonly tokenSettings: TokenSettings
  readonly upstream: URL | undefined
  readonly clusters: ReadonlyMap<string, URL>
  /** Credential sets by name: `default` (the top-level settings), or those of `--config`'s `credentials:`. */
  readonly credentialSets: ReadonlyMap<string, TokenSettings>
  /** `--config`'s `routes:`: each a prefix, an upstream and the credential set it uses. */
  readonly prefixRoutes: readonly PrefixRoute[]
  /** Clusters read from the Run:ai control plane at `upstream` (`AUTH=runai` without `CLUSTERS`, or `CLUSTERS=auto`). */
  readonly discoverClusters: boolean
  readonly host: string
  readonly port: number
  readonly socket: string | undefined
  readonly inboundKey: SecretSource | undefined
  readonly allowAnonymous: boolean
  readonly allowedHosts: readonly string[]
  readonly allowedOrigins: readonly string[]
  readonly adminAddress: { readonly host: string, readonly port: number } | undefined
  readonly readOnly: boolean
  readonly allowPaths: readonly string[]
  readonly denyPaths: readonly string[]
  readonly caFile: string | undefined
  readonly insecureSkipVerify: boolean
  /** Seconds to wait for upstream response headers. */
  readonly timeout: number
  /** As set; unset, each command has its own default (`serve`: info; `check`, `token`: no log lines). */
  readonly logLevel: string | undefined
  /** Unset: pretty on a terminal, JSON otherwise. */
  readonly logFormat: 'json' | 'pretty' | undefined
  /** What `check` asks each upstream for, with the token. */
  readonly checkPath: string
  /** Where `serve` keeps the current access token for tools that read a file (and `token` reads it). */
  readonly tokenFile: string | undefined
}
