// The peer proxies of the bench, each in its own process with one thread (or GOMAXPROCS=1),
// each adding `Authorization: Bearer fixed-token` and keeping upstream connections alive.
// A peer that is not installed is skipped, with the way to install it.
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'

export async function freePort () {
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

function find (names) {
  for (const name of names) {
    const which = spawnSync('sh', ['-c', `command -v ${name} || ls /usr/sbin/${name} /usr/lib/go/bin/${name} 2>/dev/null`], { encoding: 'utf8' })
    const binary = which.stdout.trim().split('\n')[0]
    if (which.status === 0 && binary !== '') return binary
  }
  return undefined
}

/** Waits (bounded: 10 s) until `port` answers through to the upstream. */
async function answering (child, port) {
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) return false
    const status = await fetch(`http://127.0.0.1:${port}/small`).then(async (response) => { await response.arrayBuffer(); return response.status }, () => 0)
    if (status === 200) return true
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return false
}

async function started (name, binary, args, env, port) {
  // Their own logs (Caddy's info lines) are not the bench's: a peer that fails to start is reported as such.
  const child = spawn(binary, args, { env: { ...process.env, ...env }, stdio: 'ignore' })
  if (await answering(child, port)) return { name, child, port }
  child.kill()
  return { name, skipped: `${name} did not start` }
}

const nginxConf = (dir, port, upstream) => `
worker_processes 1;
daemon off;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  upstream api { server 127.0.0.1:${upstream}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer fixed-token";
    }
  }
}
`

const haproxyConf = (port, upstream) => `
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend bench
  bind 127.0.0.1:${port}
  default_backend api
backend api
  http-reuse always
  http-request set-header Authorization "Bearer fixed-token"
  server api 127.0.0.1:${upstream}
`

const caddyfile = (port, upstream) => `{
  admin off
  auto_https off
}
http://127.0.0.1:${port} {
  reverse_proxy 127.0.0.1:${upstream} {
    header_up Authorization "Bearer fixed-token"
  }
}
`

// Go's httputil.ReverseProxy: the core of oauth2-proxy, kubectl proxy and Couper.
const goProxy = `package main

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
)

func main() {
	target, _ := url.Parse("http://127.0.0.1:" + os.Getenv("UPSTREAM_PORT"))
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{MaxIdleConnsPerHost: 64}
	direct := proxy.Director
	proxy.Director = func(r *http.Request) {
		direct(r)
		r.Header.Set("Authorization", "Bearer fixed-token")
	}
	listener, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		panic(err)
	}
	panic(http.Serve(listener, proxy))
}
`

/** nginx, HAProxy, Caddy and Go's ReverseProxy in front of `upstream`: started, or skipped with the reason. */
export async function startPeers (upstream) {
  const peers = []
  // Those run from a configuration file: what to write, and how to start it.
  const configured = [
    { name: 'nginx', apt: 'nginx-light', file: 'nginx.conf', text: (dir, port) => nginxConf(dir, port, upstream), args: (dir, file) => ['-c', file, '-p', dir] },
    { name: 'haproxy', apt: 'haproxy', file: 'haproxy.cfg', text: (_dir, port) => haproxyConf(port, upstream), args: (_dir, file) => ['-db', '-f', file] },
    {
      name: 'caddy', apt: 'caddy', file: 'Caddyfile', text: (_dir, port) => caddyfile(port, upstream), args: (_dir, file) => ['run', '--config', file, '--adapter', 'caddyfile'],
      env: (dir) => ({ GOMAXPROCS: '1', HOME: dir, XDG_DATA_HOME: dir, XDG_CONFIG_HOME: dir })
    }
  ]
  for (const peer of configured) {
    const binary = find([peer.name])
    if (binary === undefined) {
      peers.push({ name: peer.name, skipped: `not installed (apt-get install -y ${peer.apt})` })
      continue
    }
    const dir = mkdtempSync(join(tmpdir(), `bench-${peer.name}-`))
    const port = await freePort()
    const file = join(dir, peer.file)
    writeFileSync(file, peer.text(dir, port))
    peers.push(await started(peer.name, binary, peer.args(dir, file), peer.env?.(dir) ?? {}, port))
  }
  const go = find(['go'])
  if (go === undefined) {
    peers.push({ name: 'go ReverseProxy', skipped: 'Go not installed (apt-get install -y golang-go)' })
  } else {
    const dir = mkdtempSync(join(tmpdir(), 'bench-go-'))
    writeFileSync(join(dir, 'main.go'), goProxy)
    const env = { ...process.env, GOCACHE: join(dir, 'cache'), GOPATH: join(dir, 'path'), GO111MODULE: 'off', GOFLAGS: '' }
    const built = spawnSync(go, ['build', '-o', join(dir, 'proxy'), join(dir, 'main.go')], { env, encoding: 'utf8', timeout: 120_000 })
    if (built.status !== 0) {
      peers.push({ name: 'go ReverseProxy', skipped: `go build failed: ${built.stderr.trim().split('\n')[0]}` })
    } else {
      const port = await freePort()
      peers.push(await started('go ReverseProxy', join(dir, 'proxy'), [], { GOMAXPROCS: '1', UPSTREAM_PORT: String(upstream), PORT: String(port) }, port))
    }
  }
  return peers
}
