import t from 'tap'
import { errorCode, prose, scrubSecrets, spellings } from '../src/oauth/redact.js'
import { summariseError } from '../src/oauth/dialect.js'

t.test('prose keeps sentences and drops what is not a word', async (t) => {
  t.equal(prose('Invalid client or Invalid client credentials'), 'Invalid client or Invalid client credentials')
  t.equal(prose('Client authentication failed (e.g., unknown client, no client authentication included).'),
    'Client authentication failed (e.g., unknown client, no client authentication included).')
  t.equal(prose('token abc123XYZ expired; API key dGhpcyBpcyBhIHNlY3JldA== refused'), 'token […] expired; API key […] refused')
  t.equal(prose('grant_type must be client_credentials, got 401'), 'grant_type must be client_credentials, got 401')
  t.equal(prose('bad a1 b2 c3 d4 end'), 'bad […] end', 'runs of dropped words fold into one mark')
  t.equal(prose('x\r\ninjected\u0000line'), 'x injected line', 'control characters are spaces')
  const long = prose('word '.repeat(100))
  t.ok(long.length <= 122 && long.endsWith('…'), 'cut at a word boundary')
})

t.test('error codes: OAuth words and numbers only', async (t) => {
  t.equal(errorCode('invalid_client'), 'invalid_client')
  t.equal(errorCode(401), '401')
  t.equal(errorCode('Sx9+/=&secret'), undefined)
  t.equal(errorCode('cs-7Hq2-secret'), undefined)
  t.equal(errorCode({ nested: 1 }), undefined)
})

t.test('every spelling of a secret is scrubbed, and summaries keep only code and prose', async (t) => {
  const secret = 'a+b/c=d&e%f "g"'
  const all = spellings(secret, 'client')
  t.ok(all.includes(secret) && all.includes(encodeURIComponent(secret)) && all.includes('a%2Bb%2Fc%3Dd%26e%25f+%22g%22'), 'verbatim, URL- and form-encoded')
  t.ok(all.includes(Buffer.from(`client:${secret}`).toString('base64')), 'base64 in a Basic pair')
  const text = all.map((spelling) => `<${spelling}>`).join(' ')
  t.equal(scrubSecrets(text, [secret], 'client').replace(/<\[redacted\]>/g, ''), ' '.repeat(all.length - 1))
  t.equal(summariseError({ error: 'invalid_client', error_description: 'Bad client secret 9f8e7d6c5b4a' }), 'invalid_client (Bad client secret […])')
  t.equal(summariseError({ code: 401, message: 'Unauthorized' }, 401), 'Unauthorized', 'Run:ai repeats the status as code')
  t.equal(summariseError({ status: 401, message: ['Invalid username or password', 'realm provider/default-idp-2'] }), 'Invalid username or password; realm […]')
  t.equal(summariseError({ error: 'x1y2z3', error_description: '' }), undefined)
})
