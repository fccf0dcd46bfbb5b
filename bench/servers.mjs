// The servers of the bench, one per process: node servers.mjs <role>
import { createServer, request as httpRequest, Agent as HttpAgent } from 'node:http'
import { Pool } from 'undici'

const role = process.argv[2]
const upstreamPort = Number(process.env.UPSTREAM_PORT)
const SMALL = Buffer.from(JSON.stringify({ items: Array.from({ length: 14 }, (_, i) => ({ id: i, name: `item-${i}`, ok: true })) }).padEnd(1024, ' '))
const LARGE = Buffer.alloc(64 * 1024, 'x')

function listen (server) {
  server.listen(0, '127.0.0.1', () => process.stdout.write(`listening ${server.address().port}\n`))
}

if (role === 'upstream') {
  // The API: 1 KiB or 64 KiB of JSON, keep-alive.
  listen(createServer((req, res) => {
    if (req.url === '/huge') {
      // 256 MiB, streamed with back-pressure: what a model download through the proxy looks like.
      let left = 4096
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 4096 * LARGE.length })
      const more = () => {
        while (left > 0) {
          left--
          if (!res.write(LARGE)) return res.once('drain', more)
        }
        res.end()
      }
      return more()
    }
    if (req.url === '/sink') {
      // An upload: counted and dropped.
      let size = 0
      req.on('data', (chunk) => { size += chunk.length }).on('end', () => res.end(String(size)))
      return
    }
    req.resume()
    const body = req.url === '/large' ? LARGE : SMALL
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
    res.end(body)
  }))
} else if (role === 'token') {
  let count = 0
  listen(createServer((req, res) => {
    req.resume()
    if (req.url === '/count') return res.end(String(count))
    count++
    // A request with a DPoP proof gets a token bound to its key, as a DPoP-enabled server answers (RFC 9449 §5).
    const type = req.headers.dpop === undefined ? 'Bearer' : 'DPoP'
    res.writeHead(200, { 'content-type': 'application/json' }).end(`{"access_token":"bench-token","token_type":"${type}","expires_in":3600}`)
  }))
} else if (role === 'collector') {
  // An OpenTelemetry collector's OTLP/HTTP receiver that takes every export and keeps nothing: the cost of traces is the proxy's alone.
  let received = 0
  listen(createServer((req, res) => {
    if (req.url === '/count') return res.end(String(received))
    req.on('data', (chunk) => { received += chunk.length })
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end()
    })
  }))
} else if (role === 'node-pipe') {
  // The floor of a Node proxy on node:http's client: pipe both ways, add a fixed header.
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 64 })
  listen(createServer((req, res) => {
    const upstream = httpRequest({ host: '127.0.0.1', port: upstreamPort, path: req.url, method: req.method, headers: { ...req.headers, authorization: 'Bearer fixed-token' }, agent }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers)
      answer.pipe(res)
    })
    upstream.on('error', () => { res.statusCode = 502; res.end() })
    req.pipe(upstream)
  }))
} else if (role === 'undici-pipe') {
  // The floor with the HTTP client bearer-proxy uses: an undici Pool, streamed.
  const pool = new Pool(`http://127.0.0.1:${upstreamPort}`, { connections: 64 })
  listen(createServer((req, res) => {
    const headers = { ...req.headers, authorization: 'Bearer fixed-token' }
    delete headers.connection
    delete headers.host
    pool.stream({ path: req.url, method: req.method, headers, body: req.method === 'GET' || req.method === 'HEAD' ? null : req }, ({ statusCode, headers: answer }) => {
      delete answer.connection
      delete answer['keep-alive']
      delete answer['transfer-encoding']
      res.writeHead(statusCode, answer)
      return res
    }, (error) => { if (error) { res.statusCode = 502; res.end() } })
  }))
} else if (role === 'fastify-http-proxy') {
  // The stack's own floor: Fastify and @fastify/http-proxy adding a fixed header, nothing else.
  const { default: Fastify } = await import('fastify')
  const { default: httpProxy } = await import('@fastify/http-proxy')
  const { Agent } = await import('undici')
  const app = Fastify({ logger: false })
  await app.register(httpProxy, {
    upstream: `http://127.0.0.1:${upstreamPort}`,
    undici: new Agent({ connections: 64 }),
    replyOptions: {
      rewriteRequestHeaders: (_request, headers) => {
        headers.authorization = 'Bearer fixed-token' // in place, as bearer-proxy does: no second copy
        return headers
      }
    }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  process.stdout.write(`listening ${app.server.address().port}\n`)
} else {
  throw new Error(`unknown role ${role}`)
}
