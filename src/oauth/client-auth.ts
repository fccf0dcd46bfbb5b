import { createHash, randomUUID, X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { SignJWT } from 'jose'
import type { TokenSettings } from './settings.js'
import { readSigningKey } from '../keys.js'
import { readSecret } from '../secret.js'
import { readPlatformToken } from './platform-token.js'
import { trimSlashes } from '../url.js'

/**
 * How the client proves who it is to an OAuth token endpoint, one small function
 * per method (as oauth4webapi's `ClientSecretPost`, `PrivateKeyJwt`…), each adding
 * its part to a form-encoded request: the grant code does not branch on the method.
 */

/** What a method adds to: the form, its headers, and where the request goes. */
export interface ClientRequest {
  readonly form: URLSearchParams
  readonly headers: Record<string, string>
  /** The token endpoint, the `aud` of assertions unless the issuer is asked for. */
  readonly endpoint: URL
  /** Where a platform's assertion adds its expiry (ms); absent for `login`'s requests. */
  readonly expiries?: number[]
}

export const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'
/** Seconds an assertion is valid for: long enough for one request, short enough to be useless if caught. */
const ASSERTION_LIFETIME = 60

type Method = (settings: TokenSettings, request: ClientRequest) => Promise<void> | void

const METHODS: Readonly<Record<TokenSettings['clientAuth'], Method>> = {
  /** RFC 6749 §2.3.1: the secret in the form; a public client (no secret) sends its id alone. */
  client_secret_post: (settings, { form }) => {
    const client = settings.credentials.client
    if (client === undefined) return
    // RFC 7523 §2.1: a jwt-bearer grant the client signed is its proof; a client id alone adds nothing.
    if (client.secret === undefined && settings.credentials.grant === 'jwt_bearer' && settings.credentials.assertion === undefined) return
    form.set('client_id', client.id)
    if (client.secret !== undefined) form.set('client_secret', readSecret(client.secret).reveal())
  },
  /** RFC 6749 §2.3.1: HTTP Basic, both parts form-encoded before base64. */
  client_secret_basic: (settings, request) => {
    const client = settings.credentials.client
    if (client?.secret === undefined) return METHODS.client_secret_post(settings, request)
    const pair = `${formEncode(client.id)}:${formEncode(readSecret(client.secret).reveal())}`
    request.headers.authorization = `Basic ${Buffer.from(pair).toString('base64')}`
  },
  /** RFC 7523 §2.2 with an HMAC (HS256) of the client secret: the secret itself is not sent. */
  client_secret_jwt: async (settings, { form, endpoint }) => {
    const client = settings.credentials.client
    if (client?.secret === undefined) return
    const secret = new TextEncoder().encode(readSecret(client.secret).reveal())
    const assertion = await claimsFor(settings, endpoint, client.id).setProtectedHeader({ alg: 'HS256' }).sign(secret)
    setAssertion(form, client.id, assertion)
  },
  /** RFC 8705 §2.1: the TLS client certificate proves who the client is (its dispatcher presents it); the id says which. */
  tls_client_auth: (settings, { form }) => {
    const client = settings.credentials.client
    if (client !== undefined) form.set('client_id', client.id)
  },
  /** RFC 8705 §2.2: the same, with a self-signed certificate the provider has registered. */
  self_signed_tls_client_auth: (settings, request) => METHODS.tls_client_auth(settings, request),
  /** RFC 7523 §2.2, OpenID Connect Core §9: an assertion signed with the client's private key. */
  private_key_jwt: async (settings, { form, endpoint }) => {
    const client = settings.credentials.client
    if (client === undefined) return
    setAssertion(form, client.id, await signedAssertion(settings, endpoint, client.id))
  }
}

/**
 * Adds the client's authentication, by the method configured, to a form-encoded
 * token request. With `CLIENT_ASSERTION_FILE` the platform's JWT is the client's
 * assertion (RFC 7521 §4.2, Keycloak's federated client authentication, Entra's
 * workload identity) on every request of every grant, refreshes included.
 */
export async function authenticateClient (settings: TokenSettings, request: ClientRequest): Promise<void> {
  if (settings.clientAssertion === undefined) {
    await METHODS[settings.clientAuth](settings, request)
    return
  }
  const { form } = request
  if (settings.credentials.client !== undefined) form.set('client_id', settings.credentials.client.id)
  form.set('client_assertion_type', ASSERTION_TYPE)
  form.set('client_assertion', readPlatformToken(settings.clientAssertion, request.expiries ?? []))
}

/**
 * An assertion signed with the client's key: `iss` and `sub` the client, `aud` the
 * token endpoint (or the issuer), a fresh `jti`, valid for 60 s. Also the
 * jwt-bearer grant's assertion.
 */
export async function signedAssertion (settings: TokenSettings, endpoint: URL, clientId: string): Promise<string> {
  const key = settings.clientKey
  if (key === undefined) throw new Error('no client key is configured')
  // The file as it is now: a rotated key (and its kid) is used from the next assertion on.
  const { key: privateKey, alg, kid: own } = readSigningKey(key.file, key.format)
  const kid = key.id ?? own
  // A service account's assertion carries the scope and no sub (Google reads a sub as a user to act for).
  const claims = claimsFor(settings, endpoint, clientId, settings.serviceAccount ? { scope: settings.scope, subject: false } : {})
  return await claims.setProtectedHeader({ alg, typ: 'JWT', ...(kid === undefined ? {} : { kid }), ...thumbprints(settings) }).sign(privateKey)
}

/**
 * With a client certificate, the assertion names it by its thumbprints (RFC 7515
 * `x5t`, `x5t#S256`), as Entra ID finds a certificate credential.
 */
function thumbprints (settings: TokenSettings): { 'x5t'?: string, 'x5t#S256'?: string } {
  if (settings.clientCert === undefined) return {}
  const der = new X509Certificate(readFileSync(settings.clientCert.cert)).raw
  return {
    x5t: createHash('sha1').update(der).digest('base64url'),
    'x5t#S256': createHash('sha256').update(der).digest('base64url')
  }
}

function claimsFor (settings: TokenSettings, endpoint: URL, clientId: string, { scope, subject = true }: { scope?: string | undefined, subject?: boolean } = {}): SignJWT {
  const audience = settings.assertionAudience === 'issuer' && settings.endpoint.kind === 'issuer'
    ? trimSlashes(settings.endpoint.issuers[0].href)
    : endpoint.href
  const now = Math.floor(Date.now() / 1000)
  const claims = new SignJWT(scope === undefined ? {} : { scope }).setIssuer(clientId)
  if (subject) claims.setSubject(clientId)
  return claims
    .setAudience(audience)
    .setJti(randomUUID())
    .setIssuedAt(now)
    .setExpirationTime(now + ASSERTION_LIFETIME)
}

function setAssertion (form: URLSearchParams, clientId: string, assertion: string): void {
  form.set('client_id', clientId)
  form.set('client_assertion_type', ASSERTION_TYPE)
  form.set('client_assertion', assertion)
}

function formEncode (value: string): string {
  return new URLSearchParams({ v: value }).toString().slice(2)
}
