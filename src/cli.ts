#!/usr/bin/env -S node --max-semi-space-size=4 --expose-gc --
import { setFlagsFromString } from 'node:v8'
import { COMMANDS, parseArguments, UsageError } from './arguments.js'
import { FLAGS } from './config/settings.js'
import { packageVersion } from './package-root.js'

/**
 * The command line: arguments, `--help` and `--version`, then the command itself,
 * loaded only when it runs (`--help` and `--version` load nothing else).
 */


const column = (left: string, right: string): string => `  ${left.padEnd(22)}${right}`

const USAGE = `Usage: bearer-proxy [command] [flags]

A local reverse proxy that gets and renews OAuth bearer tokens and adds
"Authorization: Bearer <token>" to every request it forwards.

Commands:
${Object.entries(COMMANDS).map(([name, help]) => column(name, help)).join('\n')}

Flags (each is the BEARER_PROXY_* variable named, and wins over it):
${Object.entries(FLAGS).map(([flag, { value, setting, help }]) => `${column(`${flag} ${value}`, help)} (${setting})`).join('\n')}
${column('--config PATH', 'read settings from a YAML or JSON file (keys: clientId, upstream, …)')}
${column('--credentials NAME', 'check, token: the credential set of the --config file to use')}
${column('--env-file PATH', 'read settings from PATH (default: ./.env when present)')}
${column('--device', 'login: show a code to enter on another device (no browser here)')}
${column('--help, --version', '')}

Most used variables (BEARER_PROXY_ and):
${column('AUTH', 'oidc (default), runai, runai-apptoken, apiconnect')}
${column('TOKEN_URL', 'the token endpoint; or ISSUER (discovery), or REALM (Keycloak)')}
${column('CLIENT_ID', 'the client; CLIENT_SECRET or CLIENT_SECRET_FILE its secret')}
${column('GRANT', 'client_credentials (default), password, refresh_token, app_token, api_key')}
${column('INBOUND_KEY', 'the key clients must send when the proxy listens beyond loopback')}
${column('LOG_FORMAT', 'json, or pretty (the default on a terminal)')}
${column('TOKEN_FILE', 'keep the current token in this file, for tools that read one')}

Every setting: the README's "Configuration" section (also in the installed
package), and the examples in config/*.env.
`

async function main (): Promise<number> {
  let parsed: ReturnType<typeof parseArguments>
  try {
    parsed = parseArguments(process.argv.slice(2))
  } catch (error) {
    if (!(error instanceof UsageError)) throw error
    process.stderr.write(`bearer-proxy: ${error.message}\nRun bearer-proxy --help for the commands and flags.\n`)
    return 2
  }
  if (parsed === 'help') {
    process.stdout.write(USAGE)
    return 0
  }
  if (parsed === 'version') {
    process.stdout.write(`${packageVersion()}\n`)
    return 0
  }
  // undici's WebAssembly HTTP parser stays unoptimised: optimising it costs memory for nothing here (README, "Benchmark").
  // The shebang's flags take effect only on node's command line: --max-semi-space-size caps the young generation
  // (README, "Benchmark"), --expose-gc lets a reload collect the generation it replaced (README, "Reload").
  setFlagsFromString('--liftoff-only')
  // A health probe loads only what it needs: no settings check (Ajv), no token or server code.
  const { run } = parsed.command === 'health' ? await import('./health.js') : await import('./commands.js')
  return await run(parsed)
}

main().then((code) => {
  process.exitCode = code
}, (error: unknown) => {
  process.stderr.write(`bearer-proxy: ${(error as Error).message}\n`)
  process.exit(1)
})
