/**
 * `npm run demo`: a local OpenID Connect provider, a sample API that accepts only
 * its tokens, and bearer-proxy in front of the API, all on 127.0.0.1.
 */
import { loadConfig } from '../src/config.js'
import { API_AUDIENCE, startIdp } from './idp.js'
import { startApi } from './api.js'
import { createLogger } from '../src/log.js'
import { ListenError, type RunningProxy, startProxy } from '../src/server.js'

const CLIENT = { clientId: 'demo-client', clientSecret: 'demo-secret-not-for-production' }
/** Short-lived tokens, so that a renewal shows in the log within a minute. */
const TOKEN_TTL_SECONDS = 30

const idp = await startIdp({ clients: [CLIENT], accessTokenTtl: TOKEN_TTL_SECONDS })
const api = await startApi({ jwks: idp.jwks, issuer: idp.issuer, audience: API_AUDIENCE })
const config = loadConfig({
  env: {
    BEARER_PROXY_ISSUER: idp.issuer,
    BEARER_PROXY_CLIENT_ID: CLIENT.clientId,
    BEARER_PROXY_CLIENT_SECRET: CLIENT.clientSecret,
    BEARER_PROXY_UPSTREAM: api.url,
    BEARER_PROXY_PORT: process.env.BEARER_PROXY_PORT ?? '8080',
    BEARER_PROXY_LOG_LEVEL: process.env.BEARER_PROXY_LOG_LEVEL ?? 'info',
    BEARER_PROXY_LOG_FORMAT: process.env.BEARER_PROXY_LOG_FORMAT ?? ''
  },
  envFile: '/dev/null'
})
let proxy: RunningProxy
try {
  proxy = await startProxy(config, createLogger(config.logLevel ?? 'info', 1, config.logFormat))
} catch (error) {
  if (!(error instanceof ListenError)) throw error
  process.stderr.write(`bearer-proxy demo: ${error.message}, e.g. BEARER_PROXY_PORT=9000 npm run demo\n`)
  await Promise.all([idp.close(), api.close()])
  process.exit(2)
}

process.stderr.write(`
  bearer-proxy demo
    identity provider  ${idp.issuer}   (OpenID Connect, ${TOKEN_TTL_SECONDS} s tokens)
    sample API         ${api.url}   (401 without a token from that provider)
    proxy              ${proxy.address}

  Try it (the proxy adds the token):
    curl -s ${proxy.address}/api/v1/clusters
    curl -s ${proxy.address}/-/ready
  and without the proxy (refused):
    curl -s ${api.url}/api/v1/clusters

  Watch the log: "token fetched", then "token renewed" every ${TOKEN_TTL_SECONDS * 0.8} s. Ctrl-C stops.

`)

const stop = (): void => {
  proxy.close()
    .then(() => Promise.all([api.close(), idp.close()]))
    .finally(() => process.exit(0))
}
process.once('SIGINT', stop)
process.once('SIGTERM', stop)
