import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'

/**
 * Private keys that sign assertions (RFC 7523): read from a PEM or JWK file, or
 * from a service account's JSON key file, checked once, and kept until the file
 * changes. The key never leaves its `KeyObject`, which prints no key material.
 */

/** The algorithms of assertions, by the key's type (a JWK's `alg` picks PS256 for an RSA key). */
export type SigningAlgorithm = 'RS256' | 'PS256' | 'ES256' | 'EdDSA'

export interface SigningKey {
  readonly key: KeyObject
  readonly alg: SigningAlgorithm
  /** The JWK's `kid`, or the service account's `private_key_id`. */
  readonly kid: string | undefined
}

/** What a service account's JSON key file holds besides its key (Google's `"type": "service_account"`). */
export interface ServiceAccount {
  readonly clientEmail: string
  readonly tokenUri: string
  readonly keyId: string | undefined
  readonly privateKey: string
}

/** Why a key file cannot be used, in words that never quote it. */
export class KeyError extends Error {
  /** The setting whose file it is, when the caller cannot tell. */
  readonly setting: string | undefined

  constructor (message: string, setting?: string) {
    super(message)
    this.name = 'KeyError'
    this.setting = setting
  }
}

/** A service account's JSON key file, its fields checked (its key is checked by `signingKey`). */
export function parseServiceAccount (text: string): ServiceAccount {
  let document: Record<string, unknown>
  try {
    document = JSON.parse(text) as Record<string, unknown>
  } catch {
    throw new KeyError('is not JSON (a service account key file: client_email, private_key, token_uri)')
  }
  const field = (name: string): string | undefined => typeof document?.[name] === 'string' && document[name] !== '' ? document[name] as string : undefined
  const [clientEmail, privateKey, tokenUri] = [field('client_email'), field('private_key'), field('token_uri')]
  if (clientEmail === undefined || privateKey === undefined || tokenUri === undefined) {
    throw new KeyError('is not a service account key file: client_email, private_key and token_uri are required')
  }
  return { clientEmail, tokenUri, keyId: field('private_key_id'), privateKey }
}

/** A private key from a PEM (PKCS#8, PKCS#1 or SEC1) or a JWK, with the algorithm its type signs with. */
export function signingKey (text: string): SigningKey {
  const trimmed = text.trim()
  let key: KeyObject
  let jwk: { kid?: unknown, alg?: unknown } | undefined
  try {
    if (trimmed.startsWith('{')) {
      jwk = JSON.parse(trimmed) as { kid?: unknown, alg?: unknown, d?: unknown }
      if ((jwk as { d?: unknown }).d === undefined) throw new KeyError('holds a public key, not a private key')
      key = createPrivateKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' })
    } else {
      if (/ENCRYPTED/.test(trimmed.split('\n', 1)[0] ?? '')) throw new KeyError('is an encrypted key; give the key unencrypted (its file readable by the proxy alone)')
      if (/PUBLIC KEY|CERTIFICATE/.test(trimmed.split('\n', 1)[0] ?? '')) throw new KeyError('holds a public key or certificate, not a private key')
      key = createPrivateKey(trimmed)
    }
  } catch (error) {
    if (error instanceof KeyError) throw error
    throw new KeyError('is not a private key (PEM PKCS#8, PKCS#1 or SEC1, or a JWK)')
  }
  const kid = typeof jwk?.kid === 'string' && jwk.kid !== '' ? jwk.kid : undefined
  switch (key.asymmetricKeyType) {
    case 'rsa':
      return { key, alg: jwk?.alg === 'PS256' ? 'PS256' : 'RS256', kid }
    case 'rsa-pss':
      return { key, alg: 'PS256', kid }
    case 'ec':
      if (key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return { key, alg: 'ES256', kid }
      throw new KeyError(`is an EC key on ${key.asymmetricKeyDetails?.namedCurve ?? 'another curve'}: assertions are signed with RSA, EC P-256 or Ed25519 keys`)
    case 'ed25519':
      return { key, alg: 'EdDSA', kid }
    default:
      throw new KeyError(`is a ${key.asymmetricKeyType ?? 'kind of'} key: assertions are signed with RSA, EC P-256 or Ed25519 keys`)
  }
}

const cache = new Map<string, { readonly stamp: string, readonly key: SigningKey }>()

/**
 * The signing key of `file` (a key file, or a service account's JSON key file),
 * parsed again only when the file changed (its mtime, size or inode): a rotated key
 * is used from the next assertion on.
 */
export function readSigningKey (file: string, format: 'key' | 'service_account'): SigningKey {
  const stats = statSync(file)
  const stamp = `${format} ${stats.mtimeMs} ${stats.size} ${stats.ino}`
  const cached = cache.get(file)
  if (cached?.stamp === stamp) return cached.key
  const text = readFileSync(file, 'utf8')
  const key = format === 'key' ? signingKey(text) : serviceAccountKey(text)
  cache.set(file, { stamp, key })
  return key
}

function serviceAccountKey (text: string): SigningKey {
  const account = parseServiceAccount(text)
  const key = signingKey(account.privateKey)
  return { ...key, kid: account.keyId }
}

/** A client certificate and its private key, as TLS takes them (PEM). */
export interface ClientCertificate { readonly cert: string, readonly key: string }

/**
 * The certificate (with its chain) and key of mutual TLS (RFC 8705), read from their
 * files and checked to belong together. Throws a `KeyError` naming which file is wrong.
 */
export function readClientCertificate (certFile: string, keyFile: string): ClientCertificate {
  const certText = readFileSync(certFile, 'utf8')
  let certificate: X509Certificate
  try {
    certificate = new X509Certificate(certText)
  } catch {
    throw new KeyError('is not a PEM certificate', 'CLIENT_CERT_FILE')
  }
  const keyText = readFileSync(keyFile, 'utf8').trim()
  let key: KeyObject
  try {
    key = keyText.startsWith('{')
      ? createPrivateKey({ key: JSON.parse(keyText) as import('node:crypto').JsonWebKey, format: 'jwk' })
      : createPrivateKey(keyText)
  } catch {
    throw new KeyError('is not a private key (PEM PKCS#8, PKCS#1 or SEC1, or a JWK)', 'CLIENT_KEY_FILE')
  }
  if (!certificate.checkPrivateKey(key)) throw new KeyError('is not the certificate of the key in CLIENT_KEY_FILE', 'CLIENT_CERT_FILE')
  return { cert: certText, key: key.export({ format: 'pem', type: 'pkcs8' }) as string }
}
