import { once } from 'node:events'
import { request as httpRequest } from 'node:http'
import t from 'tap'
import { request } from 'undici'
import WebSocket, { WebSocketServer } from 'ws'
import { API_AUDIENCE } from '../demo/idp.js'
import { bearerVerifier } from '../demo/api.js'
import { baseEnv, bounded, rawHttp, startApiOf, startIdentity, startTestProxy, wsRoundTrip } from './helpers/stack.js'

t.test('chunked responses and server-sent events reach the client as each chunk is written', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  let sendNext: () => void = () => {}
  const written: number[] = []
  api.routes.set('/logs', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    let n = 0
    sendNext = () => {
      written.push(Date.now())
      if (++n < 3) res.write(`line ${n}\n`)
      else res.end(`line ${n}\n`)
    }
    sendNext()
  })
  api.routes.set('/events', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    res.write('event: ready\ndata: {"n":1}\n\n')
    sendNext = () => res.end('data: {"n":2}\n\n')
  })
  const { url } = await startTestProxy(t, baseEnv(idp, api))

  const logs = await request(`${url}/logs`)
  const received: Buffer[] = []
  for await (const chunk of logs.body) {
    received.push(chunk as Buffer)
    // The next chunk is written only once this one has arrived: no buffering in between.
    if (Buffer.concat(received).toString('latin1').split('\n').length <= 3) sendNext()
  }
  t.same(Buffer.concat(received), Buffer.from('line 1\nline 2\nline 3\n'), 'the bytes as written')
  t.ok(received.length >= 3, 'arrived chunk by chunk')
  t.notOk(logs.headers['content-encoding'], 'no compression added')

  const events = await request(`${url}/events`)
  t.equal(events.headers['content-type'], 'text/event-stream')
  const iterator = events.body[Symbol.asyncIterator]()
  const first = await iterator.next()
  t.match(String(first.value), /event: ready/, 'the first event arrives while the stream is open')
  sendNext()
  let rest = ''
  for (let next = await iterator.next(); next.done !== true; next = await iterator.next()) rest += String(next.value)
  t.match(rest, /"n":2/)
})

t.test('WebSocket: the token replaces the client\'s Authorization, messages flow both ways, closes propagate', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const cluster = await startApiOf(t, idp)
  const verify = bearerVerifier({ jwks: idp.jwks, issuer: idp.issuer, audience: API_AUDIENCE }, new Set())
  const upgrades: string[] = []
  const serverSockets: WebSocket[] = []
  let closedUpstream = 0
  let bothClosed: () => void = () => {}
  const upstreamSidesClosed = new Promise<void>((resolve) => { bothClosed = resolve })
  for (const upstream of [api, cluster]) {
    const wss = new WebSocketServer({
      server: upstream.server,
      verifyClient: (info, done) => {
        upgrades.push(info.req.url ?? '')
        verify(info.req.headers.authorization).then((claims) => done(claims !== undefined, 401, 'Unauthorized'), () => done(false, 500))
      }
    })
    wss.on('connection', (socket, req) => {
      serverSockets.push(socket)
      socket.on('message', (data) => socket.send(`echo ${String(data)} via ${req.url}`))
      socket.on('close', () => { if (++closedUpstream === 2) bothClosed() })
    })
    t.teardown(() => { wss.close() })
  }
  const { url } = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_CLUSTERS: `gpu=${cluster.url}/ws-base` })
  const wsUrl = url.replace('http', 'ws')

  for (const path of ['/stream?x=1', '/clusters/gpu/watch']) {
    const client = new WebSocket(`${wsUrl}${path}`, { headers: { authorization: 'Bearer client-junk' } })
    await once(client, 'open')
    client.send('hello')
    const [message] = await once(client, 'message') as [Buffer]
    t.match(String(message), /^echo hello via /)
    client.close()
    await once(client, 'close')
  }
  t.same(upgrades, ['/stream?x=1', '/ws-base/watch'])
  await bounded(upstreamSidesClosed, 5000, 'the upstream side to close')

  // The upstream closing closes the client.
  const client = new WebSocket(`${wsUrl}/stream`)
  await once(client, 'open')
  client.send('x')
  await once(client, 'message')
  for (const socket of serverSockets) socket.terminate()
  const [code] = await once(client, 'close') as [number]
  t.equal(code, 1006, 'the client was closed too, abnormally: the proxy tunnels bytes and sends no close frame of its own')
})

t.test('WebSocket: shutting down with a tunnel open ends the tunnel and resolves at once', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const wss = new WebSocketServer({ server: api.server })
  const upstreamClosed = new Promise<void>((resolve) => { wss.on('connection', (socket) => socket.on('close', () => resolve())) })
  t.teardown(() => { wss.close() })
  const { url, proxy } = await startTestProxy(t, baseEnv(idp, api))
  const client = new WebSocket(`${url.replace('http', 'ws')}/socket`)
  await once(client, 'open')
  const clientClosed = once(client, 'close')
  // Bounded: without the tunnels being ended, close() waits for the socket forever.
  const closed = await Promise.race([proxy.close().then(() => 'closed'), new Promise((resolve) => setTimeout(resolve, 3000, 'still open'))])
  t.equal(closed, 'closed')
  const [code] = await clientClosed as [number]
  t.equal(code, 1006, 'the client sees the connection end (no close frame: the proxy tunnels bytes, it does not speak WebSocket)')
  await upstreamClosed
  t.pass('the upstream side was closed too')
})

t.test('WebSocket: an upgrade meeting a revoked token is retried with a new one', async (t) => {
  const idp = await startIdentity(t, { accessTokenTtl: 300 })
  const api = await startApiOf(t, idp)
  const verify = bearerVerifier({ jwks: idp.jwks, issuer: idp.issuer, audience: API_AUDIENCE }, api.revoked)
  const tried: Array<string | undefined> = []
  const wss = new WebSocketServer({
    server: api.server,
    verifyClient: (info, done) => {
      verify(info.req.headers.authorization).then((claims) => {
        tried.push(claims?.jti as string | undefined)
        done(claims !== undefined, 401, 'Unauthorized')
      }, () => done(false, 500))
    }
  })
  wss.on('connection', (socket) => socket.on('message', (data) => socket.send(`echo ${String(data)}`)))
  t.teardown(() => { wss.close() })
  const { url } = await startTestProxy(t, baseEnv(idp, api))
  await (await request(`${url}/warm`)).body.dump()
  api.revoked.add(api.seen[0]?.jti as string)
  for (let i = 0; i < 2; i++) {
    t.equal(await wsRoundTrip(`${url.replace('http', 'ws')}/socket`, 'after revocation'), 'echo after revocation')
    // The next upgrade meets a freshly revoked token again, at once.
    api.revoked.add(tried.at(-1) as string)
  }
  t.equal(tried.length, 4, 'each upgrade refused once, then accepted')
  t.same(tried.map((jti) => jti === undefined), [true, false, true, false])
  t.equal(idp.tokenRequests, 3, 'one token request per revocation')
})

t.test('WebSocket: a refused upgrade is answered as the upstream answered; guard and unknown clusters apply', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const wss = new WebSocketServer({ server: api.server, verifyClient: (_info, done) => { done(false, 401, 'Unauthorized', { 'www-authenticate': 'Bearer' }) } })
  t.teardown(() => { wss.close() })
  const { url } = await startTestProxy(t, baseEnv(idp, api))
  const upgrade = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
    `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extra}\r\n`
  const refused = await rawHttp(url, upgrade('/socket'))
  t.match(refused, /^HTTP\/1.1 401 Unauthorized\r\n/)
  t.match(refused, /www-authenticate: Bearer/i)
  t.match(refused, /\r\nContent-Type: text\/html\r\n/, 'the upstream\'s header lines as it sent them')
  t.equal(refused.match(/^connection:/gim)?.length, 1, 'its hop-by-hop `Connection` (any case) replaced by the proxy\'s own')
  t.match(await rawHttp(url, upgrade('/clusters/none/x')), /^HTTP\/1.1 404[^]*unknown_cluster/)
  t.match(await rawHttp(url, upgrade('/x', 'Origin: https://evil.example\r\n')), /^HTTP\/1.1 403/, 'cross-site WebSocket hijacking refused')
  t.match(await rawHttp(url, upgrade('/a/%2e%2e/b')), /^HTTP\/1.1 400/)
})

t.test('Location and Content-Location on an upstream point back at the proxy; others are left alone', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  const cluster = await startApiOf(t, idp)
  const redirect = (location: string, header = 'location') => (_req: unknown, res: import('node:http').ServerResponse) => {
    res.writeHead(303, { [header]: location }).end()
  }
  api.routes.set('/abs', redirect(`${api.url}/next?page=2`))
  api.routes.set('/rel', redirect('/relative/path'))
  api.routes.set('/other', redirect('https://elsewhere.example/x'))
  api.routes.set('/lookalike', redirect(`${api.url}0/x`))
  api.routes.set('/content', redirect(`${api.url}/item/7`, 'content-location'))
  cluster.routes.set('/base/jobs', redirect(`${cluster.url}/base/jobs/42`))
  cluster.routes.set('/base/out', redirect(`${cluster.url}/outside`))
  const { url } = await startTestProxy(t, { ...baseEnv(idp, api), BEARER_PROXY_CLUSTERS: `gpu=${cluster.url}/base` })
  const cases: Array<[string, string, string?]> = [
    ['/abs', '/next?page=2'],
    ['/rel', '/relative/path'],
    ['/other', 'https://elsewhere.example/x'],
    ['/lookalike', `${api.url}0/x`],
    ['/content', '/item/7', 'content-location'],
    ['/clusters/gpu/jobs', '/clusters/gpu/jobs/42'],
    ['/clusters/gpu/out', `${cluster.url}/outside`]
  ]
  for (const [path, expected, header = 'location'] of cases) {
    const response = await request(`${url}${path}`)
    t.equal(response.headers[header], expected, path)
    await response.body.dump()
  }
})

t.test('upstream faults: reset before the response is 502, reset mid-body cuts the client off, the proxy keeps serving', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  api.routes.set('/reset', (req) => { req.socket.destroy() })
  api.routes.set('/cut', (req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': '1000000' })
    res.write(Buffer.alloc(64 * 1024))
    setImmediate(() => req.socket.destroy())
  })
  const { url } = await startTestProxy(t, baseEnv(idp, api))

  const reset = await request(`${url}/reset`)
  t.equal(reset.statusCode, 502)
  t.match(await reset.body.json(), { error: 'upstream_unreachable' })

  const cut = await request(`${url}/cut`)
  t.equal(cut.statusCode, 200, 'headers were already sent')
  await t.rejects(cut.body.arrayBuffer(), 'the body ends abruptly, not as a success')

  const fine = await request(`${url}/fine`)
  t.equal(fine.statusCode, 200)
  await fine.body.dump()
})

t.test('a client that goes away releases the upstream request; keep-alive reuses upstream connections', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  let upstreamClosed: () => void = () => {}
  const closed = new Promise<void>((resolve) => { upstreamClosed = resolve })
  api.routes.set('/endless', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    const timer = setInterval(() => res.write('tick\n'), 5)
    res.on('close', () => { clearInterval(timer); upstreamClosed() })
  })
  const { url } = await startTestProxy(t, baseEnv(idp, api))
  await new Promise<void>((resolve, reject) => {
    const req = httpRequest(`${url}/endless`, (res) => {
      res.once('data', () => { req.destroy(); resolve() })
    })
    req.on('error', (error) => { if (!req.destroyed) reject(error) })
    req.end()
  })
  await bounded(closed, 5000, 'the upstream response to be closed')
  t.pass('the upstream saw the client go away')

  // The aborted request's connection is gone; the first request after it connects anew (undici may open and drop a
  // connection while it clears the aborted one), and from then on one connection is kept alive.
  await (await request(`${url}/again`)).body.dump()
  const before = api.connections
  for (let i = 0; i < 50; i++) await (await request(`${url}/again`)).body.dump()
  t.equal(api.connections - before, 0, '50 sequential requests on the kept-alive connection')
})
