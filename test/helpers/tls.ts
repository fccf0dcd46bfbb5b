import { execFileSync } from 'node:child_process'
import { createServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface TestPki { readonly caFile: string, readonly key: string, readonly cert: string }

/** A throw-away CA and a server certificate for 127.0.0.1 it signed (openssl). */
export function makePki (): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-pki-'))
  const run = (...args: string[]): void => { execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' }) }
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n')
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=bearer-proxy test CA')
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1')
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2',
    '-extfile', 'ext.cnf')
  return { caFile: join(dir, 'ca.pem'), key: readFileSync(join(dir, 'server.key'), 'utf8'), cert: readFileSync(join(dir, 'server.pem'), 'utf8') }
}

export interface TlsService {
  /** `https://127.0.0.1:<port>`: the token endpoint is `<origin>/token`, anything else is the API. */
  readonly origin: string
  readonly requests: () => number
}

/** A token endpoint and an API behind one TLS certificate of `pki`: `/token` grants `token`, the API echoes the `Authorization` it got. */
export async function startTlsService (t: { teardown: (fn: () => unknown) => void }, pki: TestPki, token: string): Promise<TlsService> {
  let requests = 0
  const server = createServer({ key: pki.key, cert: pki.cert }, (req, res) => {
    requests++
    req.resume()
    if (req.url === '/token') res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: token, expires_in: 60 }))
    else res.end(`upstream saw ${req.headers.authorization}`)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { origin: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, requests: () => requests }
}
