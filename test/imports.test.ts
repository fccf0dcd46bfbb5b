import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

// The source's import graph (static, dynamic and type-only imports alike) has no cycle between files, nor between
// folders: each folder of src/, and each file at its top, is one unit.
const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '../src')

function importsOf (): Map<string, string[]> {
  const graph = new Map<string, string[]>()
  for (const entry of readdirSync(SRC, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.ts')) continue
    const file = join(entry.parentPath, entry.name)
    const specifiers = [...readFileSync(file, 'utf8').matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*)'(\.[^']+)'/g)].map((match) => match[1] as string)
    graph.set(relative(SRC, file), [...new Set(specifiers.map((specifier) => relative(SRC, resolve(dirname(file), specifier.replace(/\.js$/, '.ts')))))])
  }
  return graph
}

/** The strongly connected components of more than one node (Tarjan): each is a cycle. */
function cycles (graph: ReadonlyMap<string, readonly string[]>): string[][] {
  let next = 0
  const index = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const found: string[][] = []
  const visit = (node: string): void => {
    index.set(node, next)
    low.set(node, next++)
    stack.push(node)
    for (const to of graph.get(node) ?? []) {
      if (!index.has(to)) {
        visit(to)
        low.set(node, Math.min(low.get(node) as number, low.get(to) as number))
      } else if (stack.includes(to)) {
        low.set(node, Math.min(low.get(node) as number, index.get(to) as number))
      }
    }
    if (low.get(node) !== index.get(node)) return
    const component: string[] = []
    let member: string
    do {
      member = stack.pop() as string
      component.push(member)
    } while (member !== node)
    if (component.length > 1) found.push(component.sort())
  }
  for (const node of graph.keys()) if (!index.has(node)) visit(node)
  return found
}

const unitOf = (file: string): string => file.includes('/') ? `${file.split('/')[0] as string}/` : file

t.test('no file of src/ imports, through others, a file that imports it', async (t) => {
  const graph = importsOf()
  t.ok(graph.size > 30, 'the whole source was read')
  t.ok([...graph.values()].flat().every((to) => graph.has(to)), 'every relative import names a file of src/')
  t.same(cycles(graph), [])
})

t.test('no folder of src/ (nor file at its top) depends, through others, on one that depends on it', async (t) => {
  const units = new Map<string, Set<string>>()
  for (const [file, imports] of importsOf()) {
    const from = unitOf(file)
    const to = units.get(from) ?? new Set()
    for (const imported of imports) if (unitOf(imported) !== from) to.add(unitOf(imported))
    units.set(from, to)
  }
  t.same(cycles(new Map([...units].map(([unit, to]) => [unit, [...to]]))), [])
  // The layers as built: the token state machine knows nothing of OAuth, and OAuth nothing of the configuration or the proxy.
  t.same([...units.get('token/') ?? []].filter((unit) => !['errors.ts', 'secret.ts', 'private-file.ts'].includes(unit)), [], 'token/ uses leaves only')
  t.notOk([...units.get('oauth/') ?? []].some((unit) => ['config/', 'config.ts', 'login/', 'routes.ts', 'proxy.ts'].includes(unit)), 'oauth/ knows no configuration loading, login flow or route')
})

t.test('the README\'s Development map names every file of src/, and no file that is gone', async (t) => {
  const readme = readFileSync(resolve(SRC, '../README.md'), 'utf8')
  const map = readme.slice(readme.indexOf('## Development'))
  const named = new Set([...map.matchAll(/`src\/([\w./-]+\.ts)`/g)].map((match) => match[1] as string))
  const files = [...importsOf().keys()]
  t.same(files.filter((file) => !named.has(file)), [], 'every file is in the map')
  t.same([...named].filter((file) => !files.includes(file)), [], 'every file in the map exists')
})
