'use strict'
// What the bundle gives for `prom-client`: the registry, the three metric types
// bearer-proxy uses and the default (process) collectors. The package's index also
// loads the Pushgateway (http, https, zlib), Summary (tdigest) and the cluster
// aggregator (node:cluster, child_process, dgram), which a proxy never uses.
// The names are those src/metrics.ts imports; a file prom-client moves fails the build.
const Registry = require('prom-client/lib/registry')

module.exports = {
  Registry,
  Counter: require('prom-client/lib/counter'),
  Gauge: require('prom-client/lib/gauge'),
  Histogram: require('prom-client/lib/histogram'),
  // Loaded at the first call (the first scrape), with the modules of each collector.
  collectDefaultMetrics: (config) => require('prom-client/lib/defaultMetrics')(config)
}
