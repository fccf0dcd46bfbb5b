'use strict'
// What the bundle gives for `undici`: its dispatchers and `request`, without the web
// half that its index also loads (fetch, cookies, caches, WebSocket, EventSource,
// mocks), which neither bearer-proxy nor @fastify/reply-from uses. Measured with
// `npm run bench`'s start-up: ~45 ms sooner ready, 3 MiB less idle RSS.
// The names are those bearer-proxy (src/) and reply-from import; a file undici moves
// fails the build, not the proxy.
const Dispatcher = require('undici/lib/dispatcher/dispatcher')
const api = require('undici/lib/api')
const errors = require('undici/lib/core/errors')
const util = require('undici/lib/core/util')
const { getGlobalDispatcher, setGlobalDispatcher } = require('undici/lib/global')

Object.assign(Dispatcher.prototype, api)

// undici's index.js `makeDispatcher`, for `request(url, options)`.
function makeDispatcher (fn) {
  return (url, opts, handler) => {
    if (typeof opts === 'function') {
      handler = opts
      opts = null
    }
    if (!url || (typeof url !== 'string' && typeof url !== 'object' && !(url instanceof URL))) {
      throw new errors.InvalidArgumentError('invalid url')
    }
    if (opts != null && typeof opts !== 'object') throw new errors.InvalidArgumentError('invalid opts')
    if (opts && opts.path != null) {
      if (typeof opts.path !== 'string') throw new errors.InvalidArgumentError('invalid opts.path')
      const path = opts.path.startsWith('/') ? opts.path : `/${opts.path}`
      url = new URL(util.parseOrigin(url).origin + path)
    } else {
      if (!opts) opts = typeof url === 'object' ? url : {}
      url = util.parseURL(url)
    }
    const { agent, dispatcher = getGlobalDispatcher() } = opts
    if (agent) throw new errors.InvalidArgumentError('unsupported opts.agent. Did you mean opts.client?')
    return fn.call(dispatcher, {
      ...opts,
      origin: url.origin,
      path: url.search ? `${url.pathname}${url.search}` : url.pathname,
      method: opts.method || (opts.body ? 'PUT' : 'GET')
    }, handler)
  }
}

module.exports = {
  Dispatcher,
  Client: require('undici/lib/dispatcher/client'),
  Pool: require('undici/lib/dispatcher/pool'),
  BalancedPool: require('undici/lib/dispatcher/balanced-pool'),
  Agent: require('undici/lib/dispatcher/agent'),
  ProxyAgent: require('undici/lib/dispatcher/proxy-agent'),
  EnvHttpProxyAgent: require('undici/lib/dispatcher/env-http-proxy-agent'),
  errors,
  getGlobalDispatcher,
  setGlobalDispatcher,
  request: makeDispatcher(api.request)
}
