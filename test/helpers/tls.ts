import { execFileSync } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { createServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface TestPki {
  readonly caFile: string
  readonly key: string
  readonly cert: string
  /** Where the CA's key is, for the client certificates it signs. */
  readonly dir: string
}

/** A throw-away CA and a server certificate for 127.0.0.1 it signed (openssl). */
export function makePki (): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-pki-'))
  const run = (...args: string[]): void => { execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' }) }
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n')
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=bearer-proxy test CA')
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1')
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2',
    '-extfile', 'ext.cnf')
  return { caFile: join(dir, 'ca.pem'), key: readFileSync(join(dir, 'server.key'), 'utf8'), cert: readFileSync(join(dir, 'server.pem'), 'utf8'), dir }
}

export interface ClientCertificateFiles { readonly certFile: string, readonly keyFile: string, readonly cert: string, readonly key: string }

/** A client certificate for `CN=<name>` that the CA of `pki` signed (an EC P-256 key, PKCS#8), in files of its own. */
export function makeClientCertificate (pki: TestPki, name: string): ClientCertificateFiles {
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-client-cert-'))
  const run = (...args: string[]): void => { execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' }) }
  writeFileSync(join(dir, 'ext.cnf'), 'extendedKeyUsage=clientAuth\n')
  run('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'client.key')
  run('req', '-new', '-key', 'client.key', '-out', 'client.csr', '-subj', `/CN=${name}`)
  run('x509', '-req', '-in', 'client.csr', '-CA', join(pki.dir, 'ca.pem'), '-CAkey', join(pki.dir, 'ca.key'), '-CAcreateserial', '-out', 'client.pem', '-days', '2', '-extfile', 'ext.cnf')
  const [certFile, keyFile] = [join(dir, 'client.pem'), join(dir, 'client.key')]
  return { certFile, keyFile, cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') }
}

/** A self-signed client certificate for `CN=<name>`, and its public JWK with `x5c`, as a provider registers it (RFC 8705 §2.2). */
export function makeSelfSignedCertificate (name: string): ClientCertificateFiles & { readonly jwk: Record<string, unknown> } {
  const dir = mkdtempSync(join(tmpdir(), 'bearer-proxy-self-signed-'))
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'client.key', '-out', 'client.pem', '-days', '2', '-subj', `/CN=${name}`],
    { cwd: dir, stdio: 'ignore' })
  const [certFile, keyFile] = [join(dir, 'client.pem'), join(dir, 'client.key')]
  const cert = readFileSync(certFile, 'utf8')
  const x509 = new X509Certificate(cert)
  const jwk = { ...x509.publicKey.export({ format: 'jwk' }), x5c: [x509.raw.toString('base64')] }
  return { certFile, keyFile, cert, key: readFileSync(keyFile, 'utf8'), jwk }
}

export interface MtlsApi {
  readonly url: string
  /** The subject CN of the client certificate each request came with. */
  readonly seen: Array<{ readonly cn: string, readonly authorization: string | undefined }>
}

/** An API that accepts only TLS clients with a certificate `pki`'s CA signed, and answers with the CN it saw. */
export async function startMtlsApi (t: { teardown: (fn: () => unknown) => void }, pki: TestPki): Promise<MtlsApi> {
  const seen: Array<{ cn: string, authorization: string | undefined }> = []
  const server = createServer({ key: pki.key, cert: pki.cert, ca: readFileSync(pki.caFile), requestCert: true, rejectUnauthorized: true }, (req, res) => {
    req.resume()
    const cn = String((req.socket as import('node:tls').TLSSocket).getPeerCertificate().subject?.CN ?? '')
    seen.push({ cn, authorization: req.headers.authorization })
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ cn }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, seen }
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
