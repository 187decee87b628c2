/**
 * The policy claims of token v2 (docs/token-format.md §4.1): their grammar,
 * checked before minting, with messages that say what to fix.
 *
 * - list claims — `origins`, `ips`, `paths`, `methods`: a non-empty array
 *   of distinct, non-empty strings, each inside its grammar
 *   ({@link originProblem}, {@link ipProblem}, {@link pathProblem},
 *   {@link methodProblem});
 * - integer limits — `rps`, `burst`, `concurrency`, `max_tokens`,
 *   `max_body_bytes`: integers ≥ 1 (`burst` only with `rps`).
 *
 * The relay refuses a token whose claims break these rules (`token_invalid`,
 * no reason given), so the SDK refuses to mint one — and explains. The
 * verdicts mirror the reference implementation (`crates/token/src/scope.rs`):
 * each checker follows the Rust control flow and returns a reason where the
 * Rust parser returns `None` (a few earlier exits, such as a `/` in an
 * origin, only sharpen the message; they refuse nothing Rust accepts). IP
 * addresses are parsed by a hand-written port of Rust's `core::net` parser
 * (no dependency, same answers as the relay, IPv6 and embedded IPv4
 * included). The Python SDK has the same module (`relayapi/_policy.py`);
 * `sdk/testdata/policy-claims.json` is the corpus both SDKs and the relay
 * binary are tested against.
 *
 * Every checker returns `null` for a valid item, else a sentence fragment.
 * @internal
 */

const isDigit = (c: string | undefined): boolean => c !== undefined && c >= '0' && c <= '9';
const isHexDigit = (c: string | undefined): boolean =>
  c !== undefined && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'));
const isAlpha = (c: string): boolean => (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
const isAlnum = (c: string): boolean => isAlpha(c) || isDigit(c);
const isUpper = (c: string): boolean => c >= 'A' && c <= 'Z';
/** RFC 3986 `pchar` without percent-encoding: unreserved, sub-delims, ':', '@'. */
const isPchar = (c: string): boolean => isAlnum(c) || "-._~!$&'()*+,;=:@".includes(c);
const q = (s: string): string => JSON.stringify(s);

// ---- IP addresses: a port of Rust's core::net parser ----------------------
//
// Each reader takes (text, position) and returns [value, new position] or
// null without consuming anything, like Rust's `read_atomically`.

type Read = [number, number] | null;

function readNumber(s: string, i: number, radix: 10 | 16, maxDigits: number, allowZeroPrefix: boolean): Read {
  const limit = radix === 10 ? 0xff : 0xffff; // u8 octets, u16 groups
  const digit = radix === 10 ? isDigit : isHexDigit;
  const start = i;
  let value = 0;
  while (digit(s[i])) {
    value = value * radix + parseInt(s[i]!, radix);
    i++;
    if (value > limit || i - start > maxDigits) return null;
  }
  if (i === start || (!allowZeroPrefix && s[start] === '0' && i - start > 1)) return null;
  return [value, i];
}

function readIpv4(s: string, i: number): Read {
  let value = 0;
  for (let k = 0; k < 4; k++) {
    if (k > 0) {
      if (s[i] !== '.') return null;
      i++;
    }
    const octet = readNumber(s, i, 10, 3, false); // no leading zeros (octal)
    if (!octet) return null;
    value = value * 256 + octet[0];
    i = octet[1];
  }
  return [value, i];
}

/**
 * Up to `limit` ':'-separated hex groups, the last two of which may be an
 * embedded IPv4 address. Returns [groups, position, endedWithIpv4].
 */
function readGroups(s: string, i: number, limit: number): [number[], number, boolean] {
  const groups: number[] = [];
  for (let k = 0; k < limit; k++) {
    const sep = k > 0 ? 1 : 0;
    if (sep && s[i] !== ':') return [groups, i, false];
    if (k < limit - 1) {
      // An IPv4 tail needs two group slots.
      const v4 = readIpv4(s, i + sep);
      if (v4) {
        groups.push(Math.floor(v4[0] / 65536), v4[0] % 65536);
        return [groups, v4[1], true];
      }
    }
    const group = readNumber(s, i + sep, 16, 4, true);
    if (!group) return [groups, i, false];
    groups.push(group[0]);
    i = group[1];
  }
  return [groups, i, false];
}

function readIpv6(s: string, i: number): [number[], number] | null {
  let [head, pos, headV4] = readGroups(s, i, 8);
  if (head.length < 8) {
    if (headV4 || s.slice(pos, pos + 2) !== '::') return null; // IPv4 only at the very end
    // `::` stands for at least one zero group.
    const [tail, end] = readGroups(s, pos + 2, 8 - (head.length + 1));
    head = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
    pos = end;
  }
  return [head, pos];
}

/** A parsed address: its value and width (32 or 128 bits). */
interface IpValue {
  value: bigint;
  bits: 32 | 128;
}

/**
 * Rust's `IpAddr::from_str`: IPv4 is tried first and, if it reads
 * anything, decides; then IPv6 (any RFC 4291 text form, no zone id).
 */
export function parseIp(s: string): IpValue | null {
  const v4 = readIpv4(s, 0);
  if (v4) return v4[1] === s.length ? { value: BigInt(v4[0]), bits: 32 } : null;
  const v6 = readIpv6(s, 0);
  if (!v6 || v6[1] !== s.length) return null;
  return { value: v6[0].reduce((acc, g) => (acc << 16n) | BigInt(g), 0n), bits: 128 };
}

/** Text form of an address for messages (IPv6 per RFC 5952: lower case, longest zero run as `::`). */
export function formatIp({ value, bits }: IpValue): string {
  if (bits === 32) return [24n, 16n, 8n, 0n].map((sh) => String((value >> sh) & 0xffn)).join('.');
  const groups = Array.from({ length: 8 }, (_, k) => Number((value >> BigInt(112 - 16 * k)) & 0xffffn));
  let best = -1;
  let bestLen = 1; // a single zero group is not compressed
  for (let k = 0; k < 8; ) {
    if (groups[k] !== 0) {
      k++;
      continue;
    }
    let end = k;
    while (end < 8 && groups[end] === 0) end++;
    if (end - k > bestLen) [best, bestLen] = [k, end - k];
    k = end;
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(':');
  if (best < 0) return hex(groups);
  return `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLen))}`;
}

/** Digits only, no leading zero (except `0` itself). */
function isDecimal(s: string): boolean {
  return s.length > 0 && [...s].every(isDigit) && (s === '0' || s[0] !== '0');
}

function whyNotAnAddress(addr: string): string {
  if (addr.startsWith('[') || addr.endsWith(']')) return "write an IPv6 address without brackets, e.g. '2001:db8::1'";
  if (addr.includes('%')) return "zone ids ('%eth0') are not allowed: write the address without it";
  if (addr.length > 0 && [...addr].every((c) => isDigit(c) || c === '.')) {
    if (addr.split('.').some((o) => o.length > 1 && o[0] === '0')) {
      return 'IPv4 octets are written without leading zeros (e.g. 10.0.0.1, not 010.0.0.1)';
    }
    return "an IPv4 address is four numbers 0-255 separated by '.' (e.g. 192.0.2.7)";
  }
  if (!addr.includes(':') && [...addr].some(isAlpha)) {
    return "host names are not allowed: give an IP address or CIDR network, e.g. '192.0.2.0/24'";
  }
  if (addr !== addr.trim()) return 'remove the spaces';
  return "not an IPv4 or IPv6 address (e.g. '192.0.2.7' or '2001:db8::1')";
}

/** `address [ "/" prefix ]` with zero host bits (`scope::IpNetwork`). */
export function ipProblem(s: string): string | null {
  const slash = s.indexOf('/');
  const addr = slash < 0 ? s : s.slice(0, slash);
  const parsed = parseIp(addr);
  if (!parsed) return whyNotAnAddress(addr);
  const { value, bits } = parsed;
  let prefix: number = bits;
  if (slash >= 0) {
    const text = s.slice(slash + 1);
    if (!(isDecimal(text) && text.length <= 3)) {
      return `the prefix after '/' must be a number 0-${bits} without leading zeros or spaces`;
    }
    prefix = Number(text);
    if (prefix > bits) return `prefix /${prefix} is too long for ${bits === 32 ? 'IPv4' : 'IPv6'} (0-${bits})`;
  }
  const hostMask = (1n << BigInt(bits - prefix)) - 1n;
  if ((value & hostMask) !== 0n) {
    const network = formatIp({ value: value & ~hostMask, bits });
    return (
      `has bits set beyond the /${prefix} prefix: write the network address ` +
      `${q(`${network}/${prefix}`)} (or the bare address ${q(addr)} for one host)`
    );
  }
  return null;
}

/**
 * A valid `ips` item that can never match, or `null`: an IPv4-mapped IPv6
 * network (`::ffff:a.b.c.d`, prefix 96 or more). The relay accepts it in a
 * token, but matches a client reported as `::ffff:a.b.c.d` as the IPv4
 * address (docs/token-format.md §4.1), so such an item matches nothing.
 * Checked when minting only; the decoder, like the relay, accepts it.
 */
export function mappedIpv4Problem(s: string): string | null {
  const slash = s.indexOf('/');
  const parsed = parseIp(slash < 0 ? s : s.slice(0, slash));
  if (!parsed || parsed.bits !== 128) return null;
  const prefix = slash < 0 ? 128 : Number(s.slice(slash + 1));
  if (prefix < 96 || parsed.value >> 32n !== 0xffffn) return null;
  const v4 = formatIp({ value: parsed.value & 0xffffffffn, bits: 32 });
  const fixed = prefix === 128 ? v4 : `${v4}/${prefix - 96}`;
  return (
    "is an IPv4-mapped IPv6 address, which never matches: the relay matches IPv4 clients " +
    `(also those reported as '::ffff:a.b.c.d') as IPv4, so write ${q(fixed)}`
  );
}

// ---- origins ---------------------------------------------------------------

function isScheme(s: string): boolean {
  return s.length > 0 && isAlpha(s[0]!) && [...s].every((c) => isAlnum(c) || '+-.'.includes(c));
}

function isDomain(s: string): boolean {
  return s.length > 0 && s.split('.').every((label) => label.length > 0 && [...label].every((c) => isAlnum(c) || c === '-'));
}

function isBracketedIpv6(s: string): boolean {
  if (s.length < 2 || !s.startsWith('[') || !s.endsWith(']')) return false;
  const inner = s.slice(1, -1);
  const v6 = readIpv6(inner, 0);
  return v6 !== null && v6[1] === inner.length;
}

function isPort(s: string): boolean {
  return isDecimal(s) && s.length <= 5 && Number(s) >= 1 && Number(s) <= 65535;
}

function whyNotAHost(host: string): string {
  if (host.includes('@')) return "an origin has no user info ('user@'): write scheme://host[:port]";
  if (host.includes('*')) return "'*' is only allowed as the first label ('*.example.com' or 'https://*.example.com')";
  if (/\s/.test(host)) return 'remove the spaces';
  if ([...host].some((c) => c.charCodeAt(0) > 127)) return 'write the host in its ASCII (punycode) form, as browsers send it';
  if (host.startsWith('[')) return 'the IPv6 literal in brackets is not a valid IPv6 address';
  if (host.length === 0) return 'the host is missing';
  return "the host must be labels of letters, digits and '-' separated by '.' (no empty label)";
}

/**
 * An exact origin `scheme://host[:port]` or a subdomain wildcard
 * `[scheme://]*.domain[:port]` (`scope::OriginPattern::parse`).
 */
export function originProblem(s: string): string | null {
  if (s === '*') return "'*' alone is not a pattern: leave origins out to allow any origin, or write '*.example.com'";
  const sepAt = s.indexOf('://');
  const hasScheme = sepAt >= 0;
  const rest = hasScheme ? s.slice(sepAt + 3) : s;
  if (hasScheme && !isScheme(s.slice(0, sepAt))) {
    return `${q(s.slice(0, sepAt))} is not a URL scheme (a letter, then letters, digits, '+', '-' or '.')`;
  }
  const cuts = [...'/?#'].map((c) => rest.indexOf(c)).filter((i) => i >= 0);
  if (cuts.length) {
    // No valid host or port contains these.
    const fixed = s.slice(0, s.length - rest.length + Math.min(...cuts));
    return `an origin has no path, query or fragment, not even a trailing '/': write ${q(fixed)}`;
  }
  // split_port: a ':' inside an IPv6 literal `[...]` is not a port separator.
  let afterLiteral = 0;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0) return "the IPv6 literal has no closing ']'";
    afterLiteral = close + 1;
  }
  const colon = rest.lastIndexOf(':');
  const hasPort = colon >= afterLiteral;
  const host = hasPort ? rest.slice(0, colon) : rest;
  if (hasPort) {
    const port = rest.slice(colon + 1);
    if (!isPort(port)) return `port ${q(port)} must be a number 1-65535 without leading zeros`;
  }
  if (host.startsWith('*.')) {
    const domain = host.slice(2);
    if (isDomain(domain)) return null;
    if (domain.includes('*')) return whyNotAHost(domain);
    return "after '*.' comes a domain such as 'example.com': labels of letters, digits and '-' separated by '.', no trailing '.'";
  }
  if (!hasScheme) return `an exact origin needs its scheme: write e.g. ${q(`https://${s}`)}, or ${q(`*.${s}`)} for its subdomains`;
  if (!(isDomain(host) || isBracketedIpv6(host))) return whyNotAHost(host);
  return null;
}

// ---- paths and methods -------------------------------------------------------

/** Segments of plain `pchar`s, no empty, `.` or `..` segment (`scope::is_path_prefix`). */
export function pathProblem(s: string): string | null {
  if (s.length === 0) return 'must not be empty';
  if (s.startsWith('/')) return `paths are relative to the relay's base path: write ${q(s.replace(/^\/+/, ''))} (no leading '/')`;
  if (s.endsWith('/')) return `write ${q(s.replace(/\/+$/, ''))} (no trailing '/'; prefixes match whole segments anyway)`;
  for (const seg of s.split('/')) {
    if (seg.length === 0) return "has an empty segment ('//')";
    if (seg === '.' || seg === '..') return "'.' and '..' segments are not allowed: write the path the relay should allow";
    const bad = [...seg].find((c) => !isPchar(c));
    if (bad !== undefined) {
      if (bad === '%') return 'percent-encoding is not allowed: write the decoded characters';
      if (bad === '?' || bad === '#') return 'a path prefix has no query or fragment';
      return `character ${q(bad)} is not allowed (only letters, digits and -._~!$&'()*+,;=:@ between the '/'s)`;
    }
  }
  return null;
}

/** Upper-case ASCII letters (`scope::is_method`). */
export function methodProblem(s: string): string | null {
  if (s.length > 0 && [...s].every(isUpper)) return null;
  if (s.length > 0 && [...s].every(isAlpha)) return `methods are upper-case: write ${q(s.toUpperCase())}`;
  return "an HTTP method is upper-case letters only, e.g. 'GET' or 'POST'";
}

// ---- the claims ---------------------------------------------------------------

/** List claims (wire names): item checker and an example for messages. */
export const LIST_CLAIMS = {
  origins: [originProblem, '["https://app.example.com"]'],
  ips: [ipProblem, '["192.0.2.0/24", "2001:db8::/32"]'],
  paths: [pathProblem, '["chat/completions"]'],
  methods: [methodProblem, '["POST"]'],
} as const satisfies Record<string, readonly [(s: string) => string | null, string]>;
export type ListClaim = keyof typeof LIST_CLAIMS;

/** Integer limits (wire names), each ≥ 1. */
export const LIMIT_CLAIMS = ['rps', 'burst', 'concurrency', 'max_tokens', 'max_body_bytes'] as const;
export type LimitClaim = (typeof LIMIT_CLAIMS)[number];

const describe = (v: unknown): string =>
  v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'string' ? `string ${q(v)}` : `${typeof v} ${String(v)}`;

/**
 * Checks one list claim `claim` (wire name); `label` is how the caller calls
 * it (`origins`, or an option name) and starts the message.
 * `isWellFormed` rejects strings with lone UTF-16 surrogates. `minting`
 * also refuses items the relay accepts but that never match
 * ({@link mappedIpv4Problem}); decoders pass `false`.
 */
export function listProblem(
  claim: ListClaim,
  label: string,
  value: unknown,
  isWellFormed: (s: string) => boolean,
  minting = true,
): string | null {
  const [check, example] = LIST_CLAIMS[claim];
  if (value instanceof Set) return `${label} must be an array, not a Set: the order is part of the token, e.g. ${example}`;
  if (!Array.isArray(value)) {
    return `${label} must be an array of strings, e.g. ${example} (a single value still needs an array; got ${describe(value)})`;
  }
  if (value.length === 0) return `${label} must not be empty: leave it out for no ${claim} restriction`;
  const seen = new Map<string, number>();
  for (const [i, item] of value.entries()) {
    if (typeof item !== 'string' || item.length === 0 || !isWellFormed(item)) {
      return `${label}[${i}] must be a non-empty string (got ${describe(item)})`;
    }
    const problem = check(item);
    if (problem !== null) return `${label}[${i}] ${q(item)} is invalid: ${problem}`;
    const never = minting && claim === 'ips' ? mappedIpv4Problem(item) : null;
    if (never !== null) return `${label}[${i}] ${q(item)} ${never}`;
    const first = seen.get(item);
    if (first !== undefined) return `${label}[${i}] ${q(item)} repeats ${label}[${first}]: remove the duplicate`;
    seen.set(item, i);
  }
  return null;
}

/** Checks one integer limit; `label` starts the message. */
export function limitProblem(label: string, value: unknown): string | null {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    return `${label} must be an integer >= 1 (got ${describe(value)}); leave it out for no limit`;
  }
  if (!Number.isSafeInteger(value)) return `${label} must be at most ${Number.MAX_SAFE_INTEGER} (a safe integer)`;
  return null;
}
