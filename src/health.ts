import { request } from 'node:http'
import type { Arguments } from './arguments.js'
import { type Listening, loadListening, refused } from './config/read.js'

/**
 * `bearer-proxy health`, on its own: a container probe runs it every few seconds, so
 * it reads where the proxy listens and nothing else (no settings check, no token code).
 */
export async function run (args: Arguments): Promise<number> {
  try {
    return await health(loadListening({ envFile: args.envFile, configFile: args.configFile, flags: args.flags, forwarding: false }))
  } catch (error) {
    return refused(error)
  }
}

/** `health`: exit 0 if the running proxy's `/-/ready` answers 200; the admin listener when there is one, as probes use. */
async function health (where: Listening): Promise<number> {
  const loopback = (host: string): string => host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host
  const target = where.adminAddress !== undefined
    ? { host: loopback(where.adminAddress.host), port: where.adminAddress.port }
    : where.socket === undefined ? { host: loopback(where.host), port: where.port } : { socketPath: where.socket }
  const url = 'socketPath' in target
    ? `unix:${target.socketPath}:/-/ready`
    : `http://${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}/-/ready`
  const status = await new Promise<number | string>((resolve) => {
    const req = request({ ...target, path: '/-/ready', method: 'GET', headers: { host: 'localhost' }, timeout: 5000 }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'no answer within 5 s' })))
    req.on('error', (error) => resolve((error as NodeJS.ErrnoException).code ?? error.message))
    req.end()
  })
  if (status === 200) {
    process.stdout.write(`ok: ${url} answered 200\n`)
    return 0
  }
  process.stderr.write(`bearer-proxy: health: ${url} ${typeof status === 'number' ? `answered ${status}` : `failed: ${status}`}\n`)
  return 1
}
