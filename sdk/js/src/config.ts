/**
 * The `.rai` client config (docs/token-format.md §1): validation that
 * reports every problem at once (field + fix, never the key), `base_path`
 * normalisation and the relay base URL.
 */

import { ConfigError, type ConfigProblem } from './errors.js';
import { isHex } from './encoding.js';

const FIX = 'generate a fresh file with `relayapi gen-config`';

/** A validated `.rai` config (as written on disk, `base_path` normalised). Holds the secret key. */
export interface RaiConfig {
  version: string;
  server: {
    /** Scheme + host name, e.g. `http://localhost`. */
    host: string;
    /** 1–65535. */
    port: number;
    /** Always starts and ends with `/`. */
    base_path: string;
  };
  crypto: {
    /** `aes` (any case). */
    method: string;
    /** 64 hex characters. Secret. */
    aes_key: string;
    /** Non-empty even-length hex (legacy tokens only). Secret. */
    aes_iv_seed: string;
  };
}

/** Ensures a leading and a trailing `/` (`""` → `/`, `api` → `/api/`). */
export function normaliseBasePath(s: string): string {
  const trimmed = s.replace(/^\/+|\/+$/g, '');
  return trimmed === '' ? '/' : `/${trimmed}/`;
}

/**
 * Why `host` is not a `server.host` the relay accepts, or `null`: `http://`
 * or `https://` (any case) and a host, an optional `:port` and trailing
 * `/`, nothing else — the relay's `check_host` (crates/token/src/rai.rs),
 * worded as it words it.
 */
export function hostProblem(host: string): string | null {
  const lower = host.slice(0, 8).replace(/[A-Z]/g, (c) => c.toLowerCase());
  const scheme = ['http://', 'https://'].find((sc) => lower.startsWith(sc));
  if (scheme === undefined) {
    return 'must start with http:// or https://, e.g. "https://relay.example.com" or "http://localhost"';
  }
  let authority = host.slice(scheme.length);
  if (authority.endsWith('/')) authority = authority.slice(0, -1);
  if (authority === '') return 'must name a host after the scheme, e.g. "http://localhost"';
  if (/[/?#@\\\u0000-\u0020\u007f]/.test(authority)) {
    return 'must be a scheme and a host only (no path, query, fragment, user or spaces), e.g. "https://relay.example.com"';
  }
  return null;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && !Array.isArray(v);

/**
 * Validates a parsed `.rai` object. Unknown fields are ignored.
 * @throws {ConfigError} listing every bad field (`err.problems`).
 */
export function parseRaiConfig(value: unknown): RaiConfig {
  const problems: ConfigProblem[] = [];
  const add = (field: string, problem: string) => problems.push({ field, problem });
  if (!isObject(value)) {
    add('(root)', 'must be a JSON object with `version`, `server` and `crypto`');
    throw configError(problems);
  }
  const str = (obj: Record<string, unknown>, key: string, field: string, hint: string): string | undefined => {
    const v = obj[key];
    if (typeof v === 'string') return v;
    add(field, v === undefined ? `is missing; it ${hint}` : hint);
    return undefined;
  };
  const secret = (obj: Record<string, unknown>, key: string, field: string): string | undefined => {
    const v = obj[key];
    if (typeof v === 'string') return v;
    add(field, v === undefined ? `is missing; ${FIX}` : `must be a hex string; ${FIX}`);
    return undefined;
  };
  const section = (key: string): Record<string, unknown> | undefined => {
    const v = value[key];
    if (isObject(v)) return v;
    add(key, v === undefined ? `is missing; ${FIX}` : `must be a JSON object; ${FIX}`);
    return undefined;
  };

  const version = str(value, 'version', 'version', 'must be a string such as "1.0.0"');
  const server = section('server');
  const crypto = section('crypto');

  let host: string | undefined;
  let port: number | undefined;
  let basePath: string | undefined;
  if (server) {
    host = str(server, 'host', 'server.host', 'must be a string such as "http://localhost"');
    const problem = host === undefined ? null : hostProblem(host);
    if (problem) add('server.host', problem);
    const p = server.port;
    if (p === undefined) add('server.port', 'is missing; add e.g. "port": 8840');
    else if (typeof p !== 'number' || !Number.isInteger(p) || p < 1 || p > 65535) {
      add('server.port', 'must be an integer between 1 and 65535');
    } else port = p;
    const bp = str(server, 'base_path', 'server.base_path', 'must be a string such as "/relayapi/"');
    if (bp !== undefined) basePath = normaliseBasePath(bp);
  }

  let method: string | undefined;
  let aesKey: string | undefined;
  let seed: string | undefined;
  if (crypto) {
    method = str(crypto, 'method', 'crypto.method', 'must be the string "aes"');
    if (method !== undefined && method.toLowerCase() !== 'aes') {
      add('crypto.method', 'must be "aes" (the only supported method)');
    }
    aesKey = secret(crypto, 'aes_key', 'crypto.aes_key');
    if (aesKey !== undefined && !(aesKey.length === 64 && isHex(aesKey))) {
      add('crypto.aes_key', `must be 64 hex characters (32 bytes); ${FIX}`);
    }
    seed = secret(crypto, 'aes_iv_seed', 'crypto.aes_iv_seed');
    if (seed !== undefined && (seed.length === 0 || seed.length % 2 !== 0 || !isHex(seed))) {
      add('crypto.aes_iv_seed', `must be a non-empty, even-length hex string; ${FIX}`);
    }
  }

  if (problems.length > 0) throw configError(problems);
  return {
    version: version!,
    server: { host: host!, port: port!, base_path: basePath! },
    crypto: { method: method!, aes_key: aesKey!, aes_iv_seed: seed! },
  };
}

/** Parses `.rai` JSON text. A syntax error never echoes the content. */
export function parseRaiJson(text: string, source = '.rai config'): RaiConfig {
  if (text.startsWith('\ufeff')) {
    // The relay's JSON reader refuses a byte order mark, so must we.
    throw new ConfigError(
      `${source}: starts with a UTF-8 byte order mark (BOM), which the relay refuses as not valid JSON; save it as UTF-8 without BOM, or ${FIX}`,
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    // JSON.parse messages quote the input, which holds the key: do not chain it.
    throw new ConfigError(`${source}: not valid JSON; ${FIX}`);
  }
  try {
    return parseRaiConfig(value);
  } catch (e) {
    if (e instanceof ConfigError && source !== '.rai config') {
      throw new ConfigError(`${source}: ${e.message}`, e.problems);
    }
    throw e;
  }
}

function configError(problems: ConfigProblem[]): ConfigError {
  const lines = problems.map((p) => `${p.field} ${p.problem}`).join('; ');
  return new ConfigError(`invalid .rai config: ${lines}`, problems);
}

/** `host` without trailing `/`, plus `:port` unless `host` already has a port. */
export function raiOrigin(config: RaiConfig): string {
  const host = config.server.host.replace(/\/+$/, '');
  const sep = host.indexOf('://');
  const authority = sep >= 0 ? host.slice(sep + 3) : host;
  const close = authority.lastIndexOf(']');
  const afterIpv6 = close >= 0 ? authority.slice(close + 1) : authority;
  return afterIpv6.includes(':') ? host : `${host}:${config.server.port}`;
}

/** The relay base URL: origin + `base_path`, e.g. `http://localhost:8840/relayapi/`. */
export function raiBaseUrl(config: RaiConfig): string {
  return raiOrigin(config) + normaliseBasePath(config.server.base_path);
}
