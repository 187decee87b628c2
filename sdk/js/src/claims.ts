/**
 * Token claims (docs/token-format.md §4): the type, the rules every claim
 * must follow (shared by the minter and the decoder, so the SDK never mints
 * a token the relay would refuse), the canonical claims JSON, and the
 * effective model.
 */

import { canonicalJson, compareUtf8, isB64url, isWellFormed, jsonString } from './encoding.js';
import { LIMIT_CLAIMS, LIST_CLAIMS, limitProblem, listProblem, type ListClaim } from './policy.js';

/** Minimum `jti` length: 22 base64url characters = 128 bits. */
export const MIN_JTI_LEN = 22;
/** Maximum `jti` length: the relay keys its counters and revocations by it. */
export const MAX_JTI_LEN = 64;
/** Allowed clock skew for `nbf`/`iat`, seconds (inclusive). */
export const LEEWAY_SECS = 60;

/**
 * The claims set carried by a v2 token, with the wire (snake_case) names.
 * Contains the provider API key: treat as secret.
 */
export interface TokenClaims {
  /** Unique token id: base64url alphabet, at least 22 characters. */
  jti: string;
  /** Issued at, UTC unix seconds. */
  iat: number;
  /** Not before, UTC unix seconds. */
  nbf?: number;
  /** Expiry, UTC unix seconds; must be > `iat` (and > `nbf`). */
  exp: number;
  /** Upstream provider id (`openai`, `anthropic`, `gemini`, …). */
  provider: string;
  /** Upstream provider API key; exactly one of `api_key` and `key_ref`. */
  api_key?: string;
  /** Name of a credential held in the relay's config; the token then carries no provider key. */
  key_ref?: string;
  /** Maximum relayed calls, ≥ 1. */
  max_calls?: number;
  /** The only allowed model. */
  model?: string;
  /** Allowed models (non-empty). */
  models?: string[];
  /** End user the token was minted for. */
  sub?: string;
  /** Opaque application data (a JSON object with string `rep_m` sets the effective model). */
  ext_info?: string;
  /** Allowed browser `Origin`s: exact `scheme://host[:port]` or `[scheme://]*.domain[:port]`. */
  origins?: string[];
  /** Allowed client networks: IPv4/IPv6 addresses or CIDR networks (host bits zero). */
  ips?: string[];
  /** Allowed path prefixes after the base path, whole segments (`chat/completions`). */
  paths?: string[];
  /** Allowed HTTP methods, upper-case. */
  methods?: string[];
  /** Per-token rate limit, requests per second, ≥ 1. */
  rps?: number;
  /** Burst of the `rps` limit, ≥ 1; only with `rps` (absent: `rps`). */
  burst?: number;
  /** Maximum requests in flight, ≥ 1 (a stream counts until it ends). */
  concurrency?: number;
  /** Budget in LLM tokens (prompt + completion over all calls), ≥ 1. */
  max_tokens?: number;
  /** Maximum request body size in bytes, ≥ 1. */
  max_body_bytes?: number;
  /** Free metadata, ignored by the relay. */
  [extra: `x_${string}`]: unknown;
}

const ORDER = [
  'jti',
  'iat',
  'nbf',
  'exp',
  'provider',
  'api_key',
  'key_ref',
  'max_calls',
  'model',
  'models',
  'sub',
  'ext_info',
  'origins',
  'ips',
  'paths',
  'methods',
  'rps',
  'burst',
  'concurrency',
  'max_tokens',
  'max_body_bytes',
] as const;
const KNOWN = new Set<string>(ORDER);
const I64_MAX = 9223372036854775807n;

const isInt = (v: unknown): boolean => typeof v === 'number' && Number.isSafeInteger(v);
const isStr = (v: unknown): v is string => typeof v === 'string' && isWellFormed(v);
const isNonEmpty = (v: unknown): v is string => isStr(v) && v.length > 0;

/**
 * Why an `api_key` (a non-empty string) cannot be carried, or `null`: the
 * relay refuses any control character (U+0000–U+001F, U+007F), since no
 * request header can hold one. The text follows the claim or option name.
 * @internal
 */
export function apiKeyProblem(apiKey: string): string | null {
  const m = /[\u0000-\u001f\u007f]/.exec(apiKey);
  if (!m) return null;
  const c = m[0];
  const where = apiKey.replace(/[\r\n]+$/, '') !== apiKey ? 'ends with' : 'contains';
  const code = c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0');
  return (
    `${where} the control character ${JSON.stringify(c)} (U+${code}), which no request header can carry, ` +
    'so the relay would refuse every call; a key read from a file usually keeps its trailing newline: ' +
    'strip it (e.g. readFileSync(...).toString().trim())'
  );
}

function stringProblem(v: unknown, nonEmpty: boolean): string | null {
  const want = nonEmpty ? 'must be a non-empty string' : 'must be a string';
  if (typeof v !== 'string') return want;
  if (!isWellFormed(v)) return 'contains a lone UTF-16 surrogate (such as "\\ud800"), which UTF-8 cannot carry: fix the text';
  return nonEmpty && v.length === 0 ? want : null;
}

/** What is wrong with a claims set: the claim and a message that names it. */
export interface ClaimsProblem {
  claim: string;
  message: string;
}

/**
 * Checks the policy claims of §4.1 (`undefined` = absent) in `values`, whose
 * keys are `names(claim)` (the wire names, or option names such as
 * `maxTokens`); messages use those names.
 * @internal
 */
export function findPolicyProblem(
  values: Record<string, unknown>,
  names: (claim: string) => string = (c) => c,
  minting = true,
): ClaimsProblem | null {
  for (const claim of Object.keys(LIST_CLAIMS) as ListClaim[]) {
    const v = values[names(claim)];
    const message = v === undefined ? null : listProblem(claim, names(claim), v, isWellFormed, minting);
    if (message) return { claim: names(claim), message };
  }
  for (const claim of LIMIT_CLAIMS) {
    const v = values[names(claim)];
    const message = v === undefined ? null : limitProblem(names(claim), v);
    if (message) return { claim: names(claim), message };
  }
  const [burst, rps] = [names('burst'), names('rps')];
  if (values[burst] !== undefined && values[rps] === undefined) {
    return { claim: burst, message: `${burst} only shapes the ${rps} limit: set ${rps} too (without ${burst}, the burst is ${rps})` };
  }
  return null;
}

/**
 * Checks a claims object against §4 and the clock-free time rule of §5
 * (`exp > iat`, `exp > nbf`). Returns the first bad claim and a message
 * naming it, or `null` if the claims are well formed. `minting` (default) also
 * refuses what the relay accepts but never matches; the decoder passes `false`.
 * @internal
 */
export function findClaimsProblem(claims: unknown, minting = true): ClaimsProblem | null {
  const p = claimsProblem(claims, minting);
  if (p === null) return null;
  return 'message' in p ? p : { claim: p.claim, message: `claim ${p.claim} ${p.problem}` };
}

function claimsProblem(claims: unknown, minting: boolean): { claim: string; problem: string } | ClaimsProblem | null {
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
    return { claim: '(claims)', problem: 'must be a JSON object' };
  }
  const c = claims as Record<string, unknown>;
  for (const name of Object.keys(c)) {
    if (!KNOWN.has(name) && !name.startsWith('x_')) {
      return { claim: name, problem: 'is not a known claim (extra claims must start with x_)' };
    }
    if (!isWellFormed(name)) return { claim: name, problem: 'contains a lone UTF-16 surrogate' };
  }
  const required = ['jti', 'iat', 'exp', 'provider'];
  for (const name of required) {
    if (c[name] === undefined) return { claim: name, problem: 'is required' };
  }
  const credentials = (['api_key', 'key_ref'] as const).filter((name) => c[name] !== undefined);
  if (credentials.length !== 1) {
    return {
      claim: credentials.length ? 'key_ref' : 'api_key',
      message:
        "exactly one of the claims api_key (the provider key) and key_ref (the name of a credential held by the relay) is required; got " +
        (credentials.join(' and ') || 'neither'),
    };
  }
  if (!isStr(c.jti) || c.jti.length < MIN_JTI_LEN || c.jti.length > MAX_JTI_LEN || !isB64url(c.jti)) {
    return { claim: 'jti', problem: `must be ${MIN_JTI_LEN}-${MAX_JTI_LEN} base64url characters` };
  }
  for (const name of ['iat', 'nbf', 'exp'] as const) {
    if (name in c && !isInt(c[name])) return { claim: name, problem: 'must be an integer (UTC seconds)' };
  }
  for (const name of ['provider', credentials[0]!] as const) {
    const problem = stringProblem(c[name], true);
    if (problem) return { claim: name, problem };
  }
  if (credentials[0] === 'api_key') {
    const problem = apiKeyProblem(c.api_key as string);
    if (problem) return { claim: 'api_key', problem };
  }
  if ('max_calls' in c) {
    const m = c.max_calls;
    if (typeof m !== 'number' || !Number.isInteger(m) || m < 1) return { claim: 'max_calls', problem: 'must be an integer >= 1' };
    if (!isInt(m)) return { claim: 'max_calls', problem: `must be at most ${Number.MAX_SAFE_INTEGER} (a safe integer)` };
  }
  if ('model' in c) {
    const problem = stringProblem(c.model, true);
    if (problem) return { claim: 'model', problem };
  }
  if ('models' in c) {
    const ms = c.models;
    if (!Array.isArray(ms) || ms.length === 0 || !ms.every(isNonEmpty)) {
      return { claim: 'models', problem: 'must be a non-empty array of non-empty strings' };
    }
  }
  for (const name of ['sub', 'ext_info'] as const) {
    const problem = name in c ? stringProblem(c[name], false) : null;
    if (problem) return { claim: name, problem };
  }
  const policy = findPolicyProblem(c, (n) => n, minting);
  if (policy) return policy;
  for (const name of Object.keys(c)) {
    if (name.startsWith('x_')) {
      if (c[name] === undefined) return { claim: name, problem: 'must be a JSON value' };
      try {
        canonicalJson(c[name], true);
      } catch (e) {
        return { claim: name, problem: `must be JSON-serialisable (${(e as Error).message})` };
      }
    }
  }
  const iat = c.iat as number;
  const exp = c.exp as number;
  if (exp <= iat) return { claim: 'exp', problem: 'must be after iat' };
  if ('nbf' in c && (c.nbf as number) >= exp) return { claim: 'exp', problem: 'must be after nbf' };
  for (const name of ['iat', 'nbf', 'exp'] as const) {
    if (name in c && (BigInt(c[name] as number) > I64_MAX || BigInt(c[name] as number) < -I64_MAX - 1n)) {
      return { claim: name, problem: 'is out of range' };
    }
  }
  return null;
}

/**
 * `claims` without its absent members, the way minting sees them (and the
 * Python SDK, where `None` means absent): `undefined` anywhere, and `null`
 * for the named claims (`model: null`); an `x_*` claim may be JSON `null`.
 * Decoding does not use this: the relay refuses a token with `null` claims.
 * @internal
 */
export function presentClaims(claims: unknown): unknown {
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) return claims;
  const out: Record<string, unknown> = {};
  for (const [name, v] of Object.entries(claims)) {
    if (v === undefined || (v === null && KNOWN.has(name))) continue;
    out[name] = v;
  }
  return out;
}

/**
 * The canonical claims JSON of docs/token-format.md §4: compact, members in
 * the order `jti, iat, nbf, exp, provider, api_key, key_ref, max_calls,
 * model, models, sub, ext_info, origins, ips, paths, methods, rps, burst,
 * concurrency, max_tokens, max_body_bytes`, then `x_*` members sorted by
 * UTF-8 byte order (nested objects sorted too); array items in the order
 * given; absent (`undefined`, or `null` outside `x_*`) claims omitted.
 * Does not validate: see {@link findClaimsProblem}. Contains the API key.
 */
export function canonicalClaimsJson(claims: TokenClaims): string {
  const c = presentClaims(claims) as Record<string, unknown>;
  const parts: string[] = [];
  for (const name of ORDER) {
    const v = c[name];
    if (v === undefined) continue;
    parts.push(`${jsonString(name)}:${canonicalJson(v)}`);
  }
  const extras = Object.keys(c)
    .filter((k) => k.startsWith('x_') && c[k] !== undefined)
    .sort(compareUtf8);
  for (const name of extras) parts.push(`${jsonString(name)}:${canonicalJson(c[name])}`);
  return `{${parts.join(',')}}`;
}

/**
 * The model a token enforces: `model` if set; otherwise the `rep_m` of
 * `ext_info` as JSON.parse reads it (escapes decoded, the last `rep_m` when
 * named twice), if `ext_info` is a JSON object and that `rep_m` a string;
 * otherwise `null`. The relay reads it the same (docs/token-format.md §4).
 */
export function effectiveModel(claims: Pick<TokenClaims, 'model' | 'ext_info'>): string | null {
  if (typeof claims.model === 'string') return claims.model;
  const ext = claims.ext_info;
  if (typeof ext !== 'string' || !ext.trimStart().startsWith('{')) return null;
  try {
    const parsed: unknown = JSON.parse(ext);
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
      const rep = (parsed as Record<string, unknown>).rep_m;
      return typeof rep === 'string' ? rep : null;
    }
  } catch {
    /* not JSON: no effective model */
  }
  return null;
}
