/**
 * Byte and text helpers with no dependencies: hex, strict unpadded
 * base64url (RFC 4648 §5, canonical only), UTF-8, and the canonical JSON
 * writer of docs/token-format.md §4.
 * @internal
 */

const encoder = new TextEncoder();

export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

/** Strict UTF-8 decoding: `null` on invalid input. */
export function fromUtf8(bytes: Uint8Array): string | null {
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    return null;
  }
}

export function isHex(s: string): boolean {
  return /^[0-9a-fA-F]*$/.test(s);
}

export function hexToBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function bytesToHex(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const LOOKUP: Record<string, number> = Object.fromEntries([...ALPHABET].map((c, i) => [c, i]));

/** Unpadded base64url. */
export function b64url(bytes: Uint8Array): string {
  let out = '';
  let i = 0;
  for (; i + 3 <= bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out += ALPHABET[(n >> 18) & 63]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]! + ALPHABET[n & 63]!;
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i]! << 16;
    out += ALPHABET[(n >> 18) & 63]! + ALPHABET[(n >> 12) & 63]!;
  } else if (rest === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8);
    out += ALPHABET[(n >> 18) & 63]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]!;
  }
  return out;
}

/**
 * Strict unpadded base64url decoding: `null` for `=`, characters outside
 * `A–Z a–z 0–9 - _`, an impossible length, or non-zero unused bits.
 */
export function b64urlDecode(s: string): Uint8Array | null {
  if (s.length % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((s.length * 3) / 4));
  let acc = 0;
  let bits = 0;
  let j = 0;
  for (const c of s) {
    const v = LOOKUP[c];
    if (v === undefined) return null;
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[j++] = (acc >> bits) & 0xff;
      acc &= (1 << bits) - 1;
    }
  }
  if (acc !== 0) return null; // non-canonical: unused bits set
  return out;
}

export function isB64url(s: string): boolean {
  return /^[A-Za-z0-9_-]*$/.test(s);
}

/** True if `s` has no lone UTF-16 surrogate (so it encodes to UTF-8 losslessly). */
export function isWellFormed(s: string): boolean {
  return !/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

/** Compares two strings by Unicode code point, which equals UTF-8 byte order. */
export function compareUtf8(a: string, b: string): number {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done) return y.done ? 0 : -1;
    if (y.done) return 1;
    const cx = x.value.codePointAt(0)!;
    const cy = y.value.codePointAt(0)!;
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}

/**
 * A JSON string literal with the escapes of docs/token-format.md §4 rule 3.
 * ES2019+ `JSON.stringify` produces exactly these (callers reject lone
 * surrogates first).
 */
export function jsonString(s: string): string {
  return JSON.stringify(s);
}

/** The relay reads JSON integers into i64/u64: this is its range. */
const INT_MIN = -(2n ** 63n);
const INT_MAX = 2n ** 64n - 1n;

function checkRelayInteger(value: bigint): void {
  if (value < INT_MIN || value > INT_MAX) {
    throw new TypeError("integers must be within -2^63 … 2^64 - 1, the relay's range (write larger ones as strings)");
  }
}

/**
 * A number as Python's `json.dumps` writes it, so that both SDKs mint the
 * same bytes: integers (JavaScript cannot tell `1.0` from `1`) in plain
 * decimal like a Python `int`; other numbers like Python's `repr(float)`,
 * which uses an exponent below 1e-4 (`1e-05`, two exponent digits at least)
 * where `JSON.stringify` writes `0.00001`. Elsewhere both print the same
 * shortest round-trip digits (`1.5`, `1e+21`).
 */
export function jsonNumber(n: number): string {
  if (!Number.isFinite(n)) throw new TypeError('numbers must be finite');
  const text = JSON.stringify(n);
  if (Number.isInteger(n)) return text;
  // toExponential() gives the same shortest digits with the decimal exponent.
  const m = /^(-?[\d.]+)e-(\d+)$/.exec(n.toExponential());
  return m && Number(m[2]) > 4 ? `${m[1]}e-${m[2]!.padStart(2, '0')}` : text;
}

/**
 * Canonical JSON of an arbitrary value (used for `x_*` claims and object
 * `extInfo`): compact, object members sorted by UTF-8 byte order,
 * recursively; members whose value is `undefined` left out (as
 * `JSON.stringify` does). Numbers as {@link jsonNumber}; `bigint` allowed
 * for integers beyond 2^53. Throws `TypeError` for values JSON cannot carry
 * (undefined array items, functions, symbols, NaN, Infinity, class
 * instances) and, with `relayIntegers`, for integers outside the relay's
 * -2^63 … 2^64 − 1.
 */
export function canonicalJson(value: unknown, relayIntegers = false): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'string':
      if (!isWellFormed(value)) throw new TypeError('string contains a lone UTF-16 surrogate');
      return jsonString(value);
    case 'number':
      // An integral number is an integer here (it is written as one, like a
      // Python int), so it gets the same range check as a bigint.
      if (relayIntegers && Number.isInteger(value)) checkRelayInteger(BigInt(value));
      return jsonNumber(value);
    case 'bigint':
      if (relayIntegers) checkRelayInteger(value);
      return value.toString(10);
    case 'object': {
      if (Array.isArray(value)) {
        return `[${value.map((v) => {
          if (v === undefined) throw new TypeError('arrays cannot hold undefined');
          return canonicalJson(v, relayIntegers);
        }).join(',')}]`;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) {
        throw new TypeError('only plain objects, arrays and primitives are allowed');
      }
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj)
        .filter((k) => obj[k] !== undefined)
        .sort(compareUtf8);
      return `{${keys
        .map((k) => {
          if (!isWellFormed(k)) throw new TypeError('member name contains a lone UTF-16 surrogate');
          return `${jsonString(k)}:${canonicalJson(obj[k], relayIntegers)}`;
        })
        .join(',')}}`;
    }
    default:
      throw new TypeError(`a ${typeof value} cannot be written as JSON`);
  }
}
