'use strict'
// What the bundle gives for `ajv` (env-schema's): Ajv itself, told not to check each
// schema it compiles against the JSON Schema meta-schema, which costs compiling that
// meta-schema (~55 ms) at every start. The only schemas it is given are constants:
// env-schema's options schema and bearer-proxy's settings schema, which a test checks
// against the meta-schema (test/config.test.ts). Validation of the values is unchanged.
const ajv = require('ajv/dist/ajv.js')

class Ajv extends ajv.Ajv {
  constructor (options = {}) {
    super({ validateSchema: false, ...options })
  }
}

module.exports = exports = Ajv
for (const name of Object.keys(ajv)) if (!(name in Ajv)) exports[name] = ajv[name]
exports.default = Ajv
exports.Ajv = Ajv
