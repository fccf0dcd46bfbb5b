import { mkdtempSync, mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRemoteJWKSet, exportJWK, generateKeyPair, jwtVerify, SignJWT } from 'jose'
import { request } from 'undici'
import type { Teardown } from './stack.js'

/** The service account whose projected token a pod gets. */
export const ACCOUNT = { namespace: 'ml', name: 'trainer', subject: 'system:serviceaccount:ml:trainer' }

export interface ServiceAccountIssuer {
  readonly issuer: string
  /** A projected service account token for `audience`, valid `ttl` seconds (negative: already expired). */
  readonly sign: (audience: string, ttl?: number, subject?: string) => Promise<string>
  /**
   * The token's subject, when this issuer signed it for `audience` and it has not expired; throws otherwise.
   * Its keys are found as a relying party finds them: the discovery document, then its `jwks_uri`.
   */
  readonly verify: (token: string, audience: string) => Promise<string>
}

/**
 * A Kubernetes cluster's service account issuer as the API server publishes it: an
 * OpenID discovery document and its JWKS (`/openid/v1/jwks`), RS256 tokens with
 * `iss`, `sub`, `aud`, `exp`, `iat`, `nbf` and the `kubernetes.io` claims of a pod.
 */
export async function startServiceAccountIssuer (t: Teardown): Promise<ServiceAccountIssuer> {
  const { privateKey, publicKey } = await generateKeyPair('RS256')
  const jwks = { keys: [{ ...await exportJWK(publicKey), kid: 'sa-1', alg: 'RS256', use: 'sig' }] }
  const server = createServer((req, res) => {
    const body = req.url === '/.well-known/openid-configuration'
      ? { issuer, jwks_uri: `${issuer}/openid/v1/jwks`, response_types_supported: ['id_token'], subject_types_supported: ['public'], id_token_signing_alg_values_supported: ['RS256'] }
      : req.url === '/openid/v1/jwks' ? jwks : undefined
    res.writeHead(body === undefined ? 404 : 200, { 'content-type': 'application/json' }).end(JSON.stringify(body ?? { error: 'not found' }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise<void>((resolve) => server.close(() => { resolve() })))
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  let keys: ReturnType<typeof createRemoteJWKSet> | undefined
  const discovered = async (): Promise<ReturnType<typeof createRemoteJWKSet>> => {
    if (keys !== undefined) return keys
    const document = await (await request(`${issuer}/.well-known/openid-configuration`)).body.json() as { issuer: string, jwks_uri: string }
    if (document.issuer !== issuer) throw new Error('another issuer')
    keys = createRemoteJWKSet(new URL(document.jwks_uri))
    return keys
  }
  return {
    issuer,
    sign: async (audience, ttl = 3600, subject = ACCOUNT.subject) => {
      const now = Math.floor(Date.now() / 1000)
      return await new SignJWT({ 'kubernetes.io': { namespace: ACCOUNT.namespace, pod: { name: 'trainer-0' }, serviceaccount: { name: ACCOUNT.name } } })
        .setProtectedHeader({ alg: 'RS256', kid: 'sa-1' })
        .setIssuer(issuer).setSubject(subject).setAudience([audience])
        .setIssuedAt(now).setNotBefore(now).setExpirationTime(now + ttl)
        .sign(privateKey)
    },
    verify: async (token, audience) => (await jwtVerify(token, await discovered(), { issuer, audience })).payload.sub as string
  }
}

export interface ProjectedToken {
  /** The path a pod is told: `<volume>/token`. */
  readonly path: string
  /** The kubelet's rotation: the new token in a new timestamped directory, `..data` swapped to it at once, the old one removed. */
  readonly rotate: (token: string) => void
  /** Replaces the file's content as it is (for faults the kubelet would not make: empty, garbage). */
  readonly overwrite: (content: string) => void
  readonly remove: () => void
}

/** A projected volume as the kubelet lays it out: `token` → `..data/token`, `..data` → `..<timestamp>/`. */
export function projectedToken (token: string): ProjectedToken {
  const volume = mkdtempSync(join(tmpdir(), 'bearer-proxy-projected-'))
  let generation = 0
  let current: string | undefined
  const rotate = (next: string): void => {
    const directory = `..2026_12_07_00_00_${String(++generation).padStart(2, '0')}.${process.pid}`
    mkdirSync(join(volume, directory))
    writeFileSync(join(volume, directory, 'token'), next, { mode: 0o600 })
    symlinkSync(directory, join(volume, '..data_tmp'))
    renameSync(join(volume, '..data_tmp'), join(volume, '..data'))
    if (current !== undefined) rmSync(join(volume, current), { recursive: true, force: true })
    current = directory
  }
  rotate(token)
  symlinkSync(join('..data', 'token'), join(volume, 'token'))
  return {
    path: join(volume, 'token'),
    rotate,
    overwrite: (content) => { writeFileSync(join(volume, current as string, 'token'), content) },
    remove: () => { rmSync(join(volume, current as string, 'token'), { force: true }) }
  }
}
