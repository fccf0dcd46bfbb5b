/**
 * Text from outside (an identity provider's codes, URLs, names and errors) as it may
 * reach a terminal: without control characters (C0 but the line break, DEL, C1),
 * so no escape sequence (colours, OSC 8 links, clear-screen, erase-line, a title)
 * and no bidirectional override can change what the person reads; cut to `max`.
 */
const UNPRINTABLE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g

export function printable (text: string, max = 2000): string {
  const clean = text.replace(UNPRINTABLE, '')
  return clean.length > max ? `${clean.slice(0, max)}…` : clean
}
