/** A URL or path without its trailing slashes: `https://idp/realms/x/` and `https://idp/realms/x` are one issuer. */
export function trimSlashes (text: string): string {
  return text.replace(/\/+$/, '')
}

/** `base` with `path` appended to its own path (base paths are kept), without query or fragment. */
export function joinPath (base: URL, path: string): URL {
  const url = new URL(base.href)
  url.pathname = trimSlashes(base.pathname) + path
  url.search = ''
  url.hash = ''
  return url
}
