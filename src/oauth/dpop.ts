import { constants, createHash, createPublicKey, generateKeyPairSync, type JsonWebKey, type KeyObject, randomUUID, sign } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { type SigningAlgorithm, signingKey } from '../keys.js'
import type { ProofSigner } from '../token/access-token.js'

/** RFC 7638: a public key's required members, by key type, in lexicographic order. */
const PUBLIC_MEMBERS: Readonly<Record<string, readonly string[]>> = { EC: ['crv', 'kty', 'x', 'y'], RSA: ['e', 'kty', 'n'], OKP: ['crv', 'kty', 'x'] }

/**
 * A DPoP key (RFC 9449): made at start and kept in memory, or brought in
 * `DPOP_KEY_FILE`. Everything a proof repeats (its header, with the public `jwk`)
 * is computed once; each proof is a payload and a signature.
 * Servers' nonces are kept per origin, the latest each sent.
 */
export class DPoPKey implements ProofSigner {
  readonly #key: KeyObject
  readonly #alg: SigningAlgorithm
  /** `base64url(header).`, the same for every proof. */
  readonly #header: string
  readonly #nonces = new Map<string, string>()

  constructor (key: KeyObject, alg: SigningAlgorithm) {
    this.#key = key
    this.#alg = alg
    const jwk = createPublicKey(key).export({ format: 'jwk' }) as Record<string, string>
    // The public members alone (RFC 7638's, whose SHA-256 is the tokens' `cnf.jkt`).
    const publicJwk = Object.fromEntries((PUBLIC_MEMBERS[jwk.kty as string] ?? []).map((name) => [name, jwk[name]]))
    this.#header = `${Buffer.from(JSON.stringify({ typ: 'dpop+jwt', alg, jwk: publicJwk })).toString('base64url')}.`
  }

  /** A P-256 key of this process's own: it never leaves memory. */
  static generate (): DPoPKey {
    return new DPoPKey(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, 'ES256')
  }

  /** A key kept as a private JWK (a login's, in the login store). */
  static fromJwk (jwk: JsonWebKey): DPoPKey {
    const { key, alg } = signingKey(JSON.stringify(jwk))
    return new DPoPKey(key, alg)
  }

  /** The private key as a JWK, to be kept with a login (in its 0600 store) and nowhere else. */
  privateJwk (): JsonWebKey {
    return this.#key.export({ format: 'jwk' })
  }

  /** The key in `file` (PEM or JWK; EC P-256, RSA or Ed25519, its algorithm by its type); throws a `KeyError` why not. */
  static read (file: string): DPoPKey {
    const { key, alg } = signingKey(readFileSync(file, 'utf8'))
    return new DPoPKey(key, alg)
  }

  /**
   * A proof for one request (RFC 9449 §4.2): `htm` its method, `htu` its URL without
   * query or fragment, a fresh `jti`, `iat` now; `ath` the token's hash when one is
   * sent with it; the server's latest nonce for that origin, when it gave one.
   */
  proof (htm: string, htu: string, ath?: string): string {
    const nonce = this.#nonces.get(originOf(htu))
    const claims: Record<string, string | number> = { jti: randomUUID(), htm, htu, iat: Math.floor(Date.now() / 1000) }
    if (ath !== undefined) claims.ath = ath
    if (nonce !== undefined) claims.nonce = nonce
    const input = this.#header + Buffer.from(JSON.stringify(claims)).toString('base64url')
    return `${input}.${this.#sign(Buffer.from(input)).toString('base64url')}`
  }

  /** A server's `DPoP-Nonce`, used in the next proofs for its origin. */
  nonce (origin: string, value: string): void {
    // Bounded: a nonce is short; anything else is not one to repeat.
    if (value.length <= 512 && /^[\x21-\x7e]+$/.test(value)) this.#nonces.set(origin, value)
  }

  #sign (data: Buffer): Buffer {
    switch (this.#alg) {
      case 'ES256': return sign('sha256', data, { key: this.#key, dsaEncoding: 'ieee-p1363' })
      case 'RS256': return sign('sha256', data, this.#key)
      case 'PS256': return sign('sha256', data, { key: this.#key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 })
      case 'EdDSA': return sign(null, data, this.#key)
    }
  }

  toJSON (): string { return '[DPoP key]' }
  toString (): string { return '[DPoP key]' }
}

/**
 * A token endpoint request with a DPoP proof (RFC 9449 §5): `send` makes it with the
 * proof given; a `use_dpop_nonce` answer that brings a `DPoP-Nonce` is answered by one
 * retry with it (§8), and the server's latest nonce is kept for the next request.
 */
export async function withProof<A extends { status: number, body: unknown, nonce: string | undefined }> (key: DPoPKey, url: URL, send: (proof: string) => Promise<A>): Promise<A> {
  const htu = `${url.origin}${url.pathname}`
  let answer = await send(key.proof('POST', htu))
  if (answer.nonce !== undefined) key.nonce(url.origin, answer.nonce)
  if (answer.status === 400 && answer.nonce !== undefined && (answer.body as { error?: unknown } | undefined)?.error === 'use_dpop_nonce') {
    answer = await send(key.proof('POST', htu))
    if (answer.nonce !== undefined) key.nonce(url.origin, answer.nonce)
  }
  return answer
}

/** `https://host:port` of a URL string, as nonces are kept. */
function originOf (url: string): string {
  const end = url.indexOf('/', url.indexOf('//') + 2)
  return end === -1 ? url : url.slice(0, end)
}

/** RFC 9449 §4.2 `ath`: the access token's SHA-256, base64url. */
export function tokenHash (token: string): string {
  return createHash('sha256').update(token).digest('base64url')
}
