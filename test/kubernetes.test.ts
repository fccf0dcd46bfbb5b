import type { ChildProcess } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { type AddressInfo, connect, createServer as createNetServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Secret, Service } from 'kubernetes-models/v1'
import { Deployment } from 'kubernetes-models/apps/v1'
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2'
import { Job } from 'kubernetes-models/batch/v1'
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1'
import type { IContainer, IPodSpec } from 'kubernetes-models/v1'
import t, { type Test } from 'tap'
import { Agent, request } from 'undici'
import { parseAllDocuments } from 'yaml'
import { loadConfig } from '../src/config.js'
import { parseAddress } from '../src/config/values.js'
import { endTree } from './helpers/processes.js'
import { baseEnv, spawnCli, startApiOf, startIdentity, waitForLine } from './helpers/stack.js'

/**
 * config/kubernetes/: every object valid against the Kubernetes API's schemas
 * (kubernetes-models), every bearer-proxy container's settings a configuration the
 * proxy's own loader accepts (with the image's ENV under them and stand-ins for its
 * files), and the manifests matched to the Dockerfile and to the proxy's shutdown.
 */

const root = fileURLToPath(new URL('..', import.meta.url))
const folder = join(root, 'config/kubernetes')
const MODELS: Record<string, new (data: never) => { validate: () => void }> = {
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'batch/v1/Job': Job,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy
}
/**
 * The proxy on the image's Node, as `npm run bench` measured it (README, "Benchmark"): idle
 * RSS settled, and the peak after 256 MiB each way. The examples' requests and limits are these with headroom.
 */
const MEASURED_MIB = { idle: 85, transferPeak: 150 }
const mebibytes = (quantity: string | number | undefined): number => {
  const match = /^(\d+)(Mi|Gi)$/.exec(String(quantity))
  return match === null ? NaN : Number(match[1]) * (match[2] === 'Gi' ? 1024 : 1)
}
/** The proxy's own shutdown: in-flight requests get this long after SIGTERM (src/commands.ts, README "Command line"). */
const SHUTDOWN_GRACE_S = 10

interface K8sObject {
  apiVersion: string
  kind: string
  metadata: { name: string, labels?: Record<string, string> }
  spec?: Record<string, unknown> & { template?: { metadata?: { labels?: Record<string, string> }, spec: IPodSpec } }
}

function objectsOf (file: string): K8sObject[] {
  const documents = parseAllDocuments(readFileSync(join(folder, file), 'utf8'))
  for (const document of documents) if (document.errors.length > 0) throw new Error(`${file}: ${document.errors.map(String).join('; ')}`)
  return documents.map((document) => document.toJS() as K8sObject)
}

/** The runtime stage's `USER` and `ENV` of the Dockerfile: what a container of the image starts with. */
function image (): { user: number, env: Record<string, string>, exposed: number[] } {
  const runtime = readFileSync(join(root, 'Dockerfile'), 'utf8').split(/^FROM /m).at(-1) as string
  const env: Record<string, string> = {}
  for (const [, pairs = ''] of runtime.matchAll(/^ENV (.+)$/gm)) for (const [, key = '', value = ''] of pairs.matchAll(/(\w+)=(\S+)/g)) env[key] = value
  const user = /^USER (\d+)(?::\d+)?$/m.exec(runtime)
  return { user: Number(user?.[1] ?? NaN), env, exposed: [...runtime.matchAll(/^EXPOSE (\d+)$/gm)].map(([, port]) => Number(port)) }
}

const manifests = readdirSync(folder).filter((name) => name.endsWith('.yaml')).sort()
const isProxy = (container: IContainer): boolean => container.image?.includes('bearer-proxy') === true
const podsOf = (objects: K8sObject[]): Array<{ owner: K8sObject, pod: IPodSpec }> =>
  objects.flatMap((owner) => owner.spec?.template?.spec === undefined ? [] : [{ owner, pod: owner.spec.template.spec }])

t.test('config/kubernetes/ holds the sidecar, the gateway and the workload identity examples', async (t) => {
  t.same(manifests, ['gateway.yaml', 'sidecar.yaml', 'workload-identity.yaml'])
  t.notOk(readdirSync(join(root, 'config')).some((name) => name.startsWith('kubernetes-')), 'none left beside it')
})

t.test('the image runs as a numeric user that is not root (runAsNonRoot admits no name)', async (t) => {
  const { user } = image()
  t.ok(Number.isInteger(user) && user > 0, `USER ${user}`)
})

for (const file of manifests) {
  t.test(`${file}: every object is valid for the Kubernetes API`, async (t) => {
    for (const object of objectsOf(file)) {
      const Model = MODELS[`${object.apiVersion}/${object.kind}`]
      if (Model === undefined) {
        t.fail(`${object.apiVersion} ${object.kind} has no model in this test`)
        continue
      }
      t.doesNotThrow(() => new Model(object as never).validate(), `${object.kind} ${object.metadata.name}`)
    }
  })

  t.test(`${file}: each bearer-proxy container runs the image as it is built and with settings the proxy accepts`, async (t) => {
    const objects = objectsOf(file)
    const pods = podsOf(objects).filter(({ pod }) => [...pod.initContainers ?? [], ...pod.containers].some(isProxy))
    t.ok(pods.length > 0, 'a pod runs the proxy')
    for (const { owner, pod } of pods) {
      for (const container of [...pod.initContainers ?? [], ...pod.containers].filter(isProxy)) {
        await checkContainer(t, `${owner.kind} ${owner.metadata.name}`, owner, pod, container)
      }
    }
  })
}

async function checkContainer (t: Test, where: string, owner: K8sObject, pod: IPodSpec, container: IContainer): Promise<void> {
  const security = container.securityContext
  t.equal(security?.runAsNonRoot, true, `${where}: runAsNonRoot`)
  t.equal(security?.readOnlyRootFilesystem, true, `${where}: a read-only root (the proxy writes nothing to its image)`)
  t.equal(security?.allowPrivilegeEscalation, false, `${where}: no privilege escalation`)
  const request = mebibytes(container.resources?.requests?.memory)
  const limit = mebibytes(container.resources?.limits?.memory)
  t.ok(request >= MEASURED_MIB.idle * 1.1, `${where}: a memory request of ${request} MiB covers the idle ${MEASURED_MIB.idle} MiB with a tenth to spare`)
  t.ok(limit >= MEASURED_MIB.transferPeak * 1.25, `${where}: a memory limit of ${limit} MiB covers the ${MEASURED_MIB.transferPeak} MiB peak with a quarter to spare`)

  // A sidecar beside a tool is a native one: it starts first, and a Job completes when its tool does.
  const sidecar = pod.initContainers?.includes(container) === true
  if (pod.containers.length > 0 && !pod.containers.includes(container)) {
    t.equal(container.restartPolicy, 'Always', `${where}: a native sidecar (an init container with restartPolicy: Always)`)
  }
  if (owner.kind === 'Job') t.ok(sidecar, `${where}: in a Job the proxy is a native sidecar, or the pod never ends`)

  // The settings: the image's ENV, then the container's; each file on a volume the pod mounts, a stand-in written for it.
  const env: Record<string, string> = { ...image().env }
  const standIns = mkdtempSync(join(tmpdir(), 'bearer-proxy-k8s-'))
  for (const variable of container.env ?? []) {
    const { name } = variable
    if (!name.startsWith('BEARER_PROXY_')) continue
    if (typeof variable.value !== 'string') {
      t.fail(`${where}: ${name} is a value, not a reference (secrets are files: ${name}_FILE)`)
      continue
    }
    if (!name.endsWith('_FILE')) {
      env[name] = variable.value
      continue
    }
    const path = variable.value
    const mount = container.volumeMounts?.find((volume) => path.startsWith(`${volume.mountPath}/`))
    const volume = pod.volumes?.find((one) => one.name === mount?.name)
    t.ok(volume, `${where}: ${name} (${path}) is on a volume the pod mounts`)
    const projected = volume?.projected?.sources?.find((source) => source.serviceAccountToken !== undefined)?.serviceAccountToken
    if (projected !== undefined) {
      t.equal(path, `${mount?.mountPath ?? ''}/${projected.path}`, `${where}: ${name} at the path the projection writes`)
      t.type(projected.audience, 'string', `${where}: the projected token is bound to an audience`)
      t.ok((projected.expirationSeconds ?? 3600) >= 600, `${where}: and lives at least the 10 minutes Kubernetes asks for`)
    }
    env[name] = join(standIns, name)
    writeFileSync(env[name], projected === undefined ? 'from-the-secret' : 'x.y.z')
  }
  const config = loadConfig({ env, envFile: '/dev/null', forwarding: true })
  if (config.host !== '127.0.0.1') {
    t.ok(config.inboundKey !== undefined, `${where}: listening on ${config.host} with an inbound key`)
    const port = container.ports?.find((one) => one.containerPort === config.port)
    t.ok(port, `${where}: the proxy's port ${config.port} is a container port`)
    t.ok(image().exposed.includes(config.port), `${where}: the port the image exposes`)
  } else {
    t.pass(`${where}: on loopback, for the pod's own containers only`)
  }

  // Probes on the admin listener, which needs no key and serves nothing else.
  const admin = parseAddress(env.BEARER_PROXY_ADMIN_ADDRESS ?? '')
  if (typeof admin === 'string') throw new Error(`${where}: ${admin}`)
  const portOf = (port: string | number | undefined): number | undefined => typeof port === 'number' ? port : container.ports?.find((named) => named.name === port)?.containerPort
  t.equal(portOf(container.readinessProbe?.httpGet?.port), admin.port, `${where}: readiness on ADMIN_ADDRESS`)
  t.equal(container.readinessProbe?.httpGet?.path, '/-/ready')
  t.equal(portOf(container.livenessProbe?.httpGet?.port), admin.port, `${where}: liveness on ADMIN_ADDRESS`)
  t.equal(container.livenessProbe?.httpGet?.path, '/-/healthy')
  if (container.startupProbe !== undefined) {
    t.equal(container.startupProbe.httpGet?.path, '/-/ready', `${where}: started once the first token is held`)
    t.equal(portOf(container.startupProbe.httpGet?.port), admin.port)
  }
}

t.test('gateway.yaml: replicas behind a Service, scaled and protected, reached only by labelled clients, stopped without losing a request', async (t) => {
  const objects = objectsOf('gateway.yaml')
  const one = <T>(kind: string): K8sObject & T => {
    const found = objects.filter((object) => object.kind === kind)
    t.equal(found.length, kind === 'Job' ? 1 : 1, `one ${kind}`)
    return found[0] as K8sObject & T
  }
  const deployment = one<{ spec: { replicas: number, selector: { matchLabels: Record<string, string> }, template: { metadata: { labels: Record<string, string> }, spec: IPodSpec } } }>('Deployment')
  const labels = deployment.spec.template.metadata.labels
  const matches = (selector: Record<string, string> | undefined, of: Record<string, string>): boolean =>
    selector !== undefined && Object.entries(selector).every(([key, value]) => of[key] === value)
  const pod = deployment.spec.template.spec
  const proxy = pod.containers.find(isProxy) as IContainer
  t.ok(deployment.spec.replicas >= 2, 'two replicas or more')
  t.ok(matches(deployment.spec.selector.matchLabels, labels))

  const service = one<{ spec: { selector: Record<string, string>, ports: Array<{ targetPort: string | number }> } }>('Service')
  t.ok(matches(service.spec.selector, labels), 'the Service selects the proxy\'s pods')
  for (const { targetPort } of service.spec.ports) t.ok(proxy.ports?.some((port) => port.name === targetPort || port.containerPort === targetPort), `the Service's target ${String(targetPort)} is the proxy's port`)

  const hpa = one<{ spec: { scaleTargetRef: { kind: string, name: string }, minReplicas: number, maxReplicas: number } }>('HorizontalPodAutoscaler')
  t.same([hpa.spec.scaleTargetRef.kind, hpa.spec.scaleTargetRef.name], ['Deployment', deployment.metadata.name])
  t.ok(hpa.spec.minReplicas >= 2 && hpa.spec.maxReplicas >= hpa.spec.minReplicas)
  t.ok(proxy.resources?.requests?.cpu !== undefined, 'a CPU request, which the autoscaler\'s utilisation is a share of')

  const budget = one<{ spec: { minAvailable: number, selector: { matchLabels: Record<string, string> } } }>('PodDisruptionBudget')
  t.ok(matches(budget.spec.selector.matchLabels, labels))
  t.ok(budget.spec.minAvailable >= 1 && budget.spec.minAvailable < hpa.spec.minReplicas, 'a drain can always proceed, one replica always serves')

  const policy = one<{ spec: { podSelector: { matchLabels: Record<string, string> }, policyTypes: string[], ingress: Array<{ from: Array<{ podSelector?: { matchLabels: Record<string, string> } }>, ports: Array<{ port: string | number }> }> } }>('NetworkPolicy')
  t.ok(matches(policy.spec.podSelector.matchLabels, labels), 'the policy covers the proxy\'s pods')
  t.ok(policy.spec.policyTypes.includes('Ingress'))
  const proxyPort = policy.spec.ingress.find((rule) => rule.ports.some((port) => port.port === 'proxy'))
  const clientLabels = proxyPort?.from.map((peer) => peer.podSelector?.matchLabels).find((selector) => selector !== undefined)
  t.ok(clientLabels !== undefined && Object.keys(clientLabels).length > 0, 'only pods with a label reach the proxy\'s port')
  for (const rule of policy.spec.ingress) for (const { port } of rule.ports) t.ok(proxy.ports?.some((named) => named.name === port), `the policy's port ${String(port)} is one the proxy declares`)
  const client = one<{ spec: { template: { metadata: { labels: Record<string, string> } } } }>('Job')
  t.ok(matches(clientLabels, client.spec.template.metadata.labels), 'the example client carries the label')

  // The key comes from a Secret in the file, as a file.
  const secret = one<{ metadata: { name: string }, stringData: Record<string, string> }>('Secret')
  const keyFile = proxy.env?.find((variable) => variable.name === 'BEARER_PROXY_INBOUND_KEY_FILE')?.value ?? ''
  const mount = proxy.volumeMounts?.find((volume) => keyFile.startsWith(`${volume.mountPath}/`))
  t.equal(pod.volumes?.find((volume) => volume.name === mount?.name)?.secret?.secretName, secret.metadata.name, 'the inbound key is the Secret\'s')
  t.ok(keyFile.split('/').at(-1) as string in secret.stringData)

  // Shutdown: endpoints removed during preStop's sleep, then the proxy's own grace, inside the pod's.
  const sleep = proxy.lifecycle?.preStop?.sleep?.seconds ?? 0
  t.ok(sleep >= 3, `preStop sleeps ${sleep} s while the endpoints are removed`)
  t.ok((pod.terminationGracePeriodSeconds ?? 30) >= sleep + SHUTDOWN_GRACE_S + 1, `terminationGracePeriodSeconds ${String(pod.terminationGracePeriodSeconds)} covers ${sleep} + ${SHUTDOWN_GRACE_S} s`)
  const strategy = (deployment.spec as { strategy?: { rollingUpdate?: { maxUnavailable?: number } } }).strategy
  t.equal(strategy?.rollingUpdate?.maxUnavailable, 0, 'a rolling update starts a ready replica before it stops one')
  const hosts = proxy.env?.find((variable) => variable.name === 'BEARER_PROXY_ALLOWED_HOSTS')?.value?.split(',') ?? []
  t.ok(hosts.includes(service.metadata.name), 'the Service\'s name is an allowed Host')
})

t.test('a rolling update as the gateway does it: endpoints removed, then SIGTERM; under keep-alive load through a Service-like balancer, no request fails or gets 503', async (t) => {
  const idp = await startIdentity(t)
  const api = await startApiOf(t, idp)
  let release: () => void = () => {}
  api.routes.set('/slow-upload', (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('first ')
    release = () => res.end('last')
  })
  /** A replica, as the gateway's pods run it. */
  const replica = async (): Promise<{ child: ChildProcess, port: number }> => {
    const child = spawnCli(['serve'], { ...baseEnv(idp, api), BEARER_PROXY_PORT: '0' })
    t.teardown(async () => { if (child.pid !== undefined) await endTree(child.pid) })
    const listening = waitForLine(child, /"event":"listening"/, 15_000)
    await waitForLine(child, /"event":"ready"/, 15_000)
    return { child, port: Number(new URL((JSON.parse(await listening) as { address: string }).address).port) }
  }
  const [old, fresh] = await Promise.all([replica(), replica()])

  // A Service as kube-proxy makes it: each new connection goes to one of the endpoints; a connection stays where it went.
  let endpoints = [old.port, fresh.port]
  let next = 0
  const served = new Map<number, number>()
  const balancer = createNetServer((client) => {
    const port = endpoints[next++ % endpoints.length] as number
    served.set(port, (served.get(port) ?? 0) + 1)
    const backend = connect(port, '127.0.0.1')
    client.pipe(backend).pipe(client)
    client.on('error', () => backend.destroy())
    backend.on('error', () => client.destroy())
    client.on('close', () => backend.destroy())
    backend.on('close', () => client.destroy())
  })
  balancer.listen(0, '127.0.0.1')
  await once(balancer, 'listening')
  t.teardown(() => { balancer.close() })
  const service = `http://127.0.0.1:${(balancer.address() as AddressInfo).port}`

  // Clients with keep-alive connections, each sending GETs one after the other. A GET written onto a connection
  // the server closed at that instant gets no answer at all; it is sent again once, as RFC 9110 §9.2.2 lets
  // a client do with an idempotent request (Go's Transport and browsers do).
  const pool = new Agent({ connections: 8 })
  t.teardown(async () => await pool.close())
  const statuses = new Map<number, number>()
  const failures: string[] = []
  let resent = 0
  let answered = 0
  let running = true
  const progress = new EventEmitter()
  const answeredAtLeast = async (count: number): Promise<void> => {
    const deadline = AbortSignal.timeout(20_000)
    while (answered < count) await once(progress, 'answer', { signal: deadline })
  }
  const get = async (path: string, again = true): Promise<number> => {
    try {
      const response = await request(`${service}${path}`, { dispatcher: pool })
      await response.body.dump()
      return response.statusCode
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? ''
      if (again && (code === 'UND_ERR_SOCKET' || code === 'ECONNRESET')) {
        resent++
        return await get(path, false)
      }
      throw error
    }
  }
  const clients = Array.from({ length: 8 }, async (_, client) => {
    for (let i = 0; running; i++) {
      try {
        const status = await get(`/rolling/${client}/${i}`)
        statuses.set(status, (statuses.get(status) ?? 0) + 1)
      } catch (error) {
        failures.push(`${(error as NodeJS.ErrnoException).code ?? ''} ${(error as Error).message}`)
      }
      answered++
      progress.emit('answer')
    }
  })

  await answeredAtLeast(200)
  // A request in flight on the old replica when it is told to stop: an upload still being answered.
  const inflight = await request(`http://127.0.0.1:${old.port}/slow-upload`, { method: 'POST', body: 'not idempotent' })
  // The pod is terminating: its endpoint is removed (new connections go to the other replica) while preStop sleeps.
  endpoints = [fresh.port]
  await answeredAtLeast(answered + 150)
  // preStop is over: SIGTERM.
  const exited = once(old.child, 'exit')
  old.child.kill('SIGTERM')
  await waitForLine(old.child, /shutting down/)
  await answeredAtLeast(answered + 150)
  release()
  t.equal(await inflight.body.text(), 'first last', 'the request in flight at SIGTERM was answered whole')
  const [code] = await exited as [number]
  t.equal(code, 0, 'the old replica exited 0')
  await answeredAtLeast(answered + 150)
  running = false
  await Promise.all(clients)

  t.same(failures, [], 'no request failed')
  t.same([...statuses.keys()], [200], `every answer 200: ${JSON.stringify(Object.fromEntries(statuses))}`)
  // Only a connection that was idle at SIGTERM is closed without an answer, once: at most one GET per connection is sent again.
  t.ok(resent <= 8, `${resent} GETs sent again, at most one per keep-alive connection`)
  t.ok((served.get(old.port) ?? 0) > 0 && (served.get(fresh.port) ?? 0) > 0, 'both replicas served')
})
