/**
 * Minting and decoding v2 tokens (docs/token-format.md §2–§6) with WebCrypto
 * only: HKDF-SHA256 content key, `kid`, JWE compact `dir` + `A256GCM` with
 * the exact canonical header as AAD.
 */

import {
  apiKeyProblem,
  canonicalClaimsJson,
  effectiveModel,
  findClaimsProblem,
  findPolicyProblem,
  LEEWAY_SECS,
  presentClaims,
  type TokenClaims,
} from './claims.js';
import { InvalidArgumentError, RelayAPIError, TokenError } from './errors.js';
import { b64url, b64urlDecode, bytesToHex, canonicalJson, fromUtf8, hexToBytes, isHex, utf8 } from './encoding.js';

/** HKDF `info` of v2 tokens. */
export const TOKEN_INFO = 'relayapi token v2';
/** Longest token a relay accepts (and this SDK mints), bytes. */
export const MAX_TOKEN_LEN = 16384;
/** Providers need no registration here; this is only the default. */
export const DEFAULT_PROVIDER = 'openai';
/** Default token lifetime, seconds. */
export const DEFAULT_EXPIRE_SECONDS = 3600;

/**
 * Options of `createToken` / `generateUrl` (same names and defaults as the
 * Python SDK, camelCased). `null` means the same as leaving an option out
 * (its default: `provider` `"openai"`, `expireSeconds` 3600, no limit for the
 * others), as `None` does in Python.
 *
 * The policy options (`origins` … `maxBodyBytes`, docs/token-format.md §4.1)
 * need a relay that understands these claims; an older relay refuses such
 * tokens as `token_invalid` (fail closed).
 */
export interface CreateTokenOptions {
  /**
   * The provider API key the relay will inject (carried encrypted in the
   * token). Exactly one of `apiKey` and `keyRef` is required; that rule is
   * checked at run time (InvalidArgumentError), not by these types, so that
   * `apiKey: process.env.OPENAI_API_KEY` (`string | undefined`) and
   * `{ apiKey: useRef ? undefined : key, keyRef: useRef ? name : undefined }`
   * keep type-checking.
   */
  apiKey?: string | null;
  /**
   * Instead of `apiKey`: the name of a credential held in the relay's config
   * (`credentials`). The token then carries no provider key at all.
   */
  keyRef?: string | null;
  /** Provider id. Default (also for `null`) `"openai"`. */
  provider?: string | null;
  /** Lifetime in seconds from now (UTC). Positive integer; default (also for `null`) 3600, never "no expiry". */
  expireSeconds?: number | null;
  /** Maximum number of relayed calls (integer >= 1); omitted = unlimited. */
  maxCalls?: number | null;
  /** The only model the token may use. */
  model?: string | null;
  /** Models the token may use (non-empty array of non-empty strings). */
  models?: readonly string[] | null;
  /** End user the token is minted for (shows up in usage logs). */
  sub?: string | null;
  /** Opaque application data; a plain object is JSON-encoded (`{"rep_m": "gpt-4o"}` sets the effective model). */
  extInfo?: string | Record<string, unknown> | null;
  /** Allowed browser `Origin`s: exact (`https://app.example.com`) or subdomain wildcards (`*.example.com`, `https://*.example.com`). */
  origins?: readonly string[] | null;
  /** Allowed client networks: IPv4/IPv6 addresses or CIDR networks (`192.0.2.0/24`, `2001:db8::/32`). */
  ips?: readonly string[] | null;
  /** Allowed path prefixes after the base path, matched on whole segments (`["chat/completions"]`). */
  paths?: readonly string[] | null;
  /** Allowed HTTP methods, upper-case (`["POST"]`). */
  methods?: readonly string[] | null;
  /** Per-token rate limit in requests per second (integer >= 1). */
  rps?: number | null;
  /** Burst of the `rps` limit (integer >= 1; needs `rps`; default `rps`). */
  burst?: number | null;
  /** Maximum requests of this token in flight at once (integer >= 1; a stream counts until it ends). */
  concurrency?: number | null;
  /** Budget in LLM tokens, prompt + completion summed over all calls (integer >= 1). */
  maxTokens?: number | null;
  /** Maximum request body size in bytes (integer >= 1). */
  maxBodyBytes?: number | null;
}

/** Option name of each policy claim (`max_tokens` → `maxTokens`). */
const POLICY_OPTIONS: Record<string, keyof CreateTokenOptions> = {
  origins: 'origins',
  ips: 'ips',
  paths: 'paths',
  methods: 'methods',
  rps: 'rps',
  burst: 'burst',
  concurrency: 'concurrency',
  max_tokens: 'maxTokens',
  max_body_bytes: 'maxBodyBytes',
};

/** Every option name `createToken` knows; anything else is refused. */
const KNOWN_OPTIONS: ReadonlySet<string> = new Set([
  'apiKey',
  'keyRef',
  'provider',
  'expireSeconds',
  'maxCalls',
  'model',
  'models',
  'sub',
  'extInfo',
  ...Object.values(POLICY_OPTIONS),
]);

/** `max_calls` → `maxCalls`: the likely meaning of a snake_case slip. */
const camel = (name: string) => name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

/** Result of {@link TokenGenerator.decryptToken}. */
export interface DecodedToken {
  /** The decoded claims (contains the provider API key). */
  claims: TokenClaims;
  /** The decoded protected header. */
  header: Record<string, unknown>;
  /** `model`, else `ext_info.rep_m`, else `null`. */
  effectiveModel: string | null;
}

/**
 * Test hooks for `new TokenGenerator(aesKey, hooks)`: a fixed clock and byte
 * source so tokens reproduce byte for byte. Not for production use.
 */
export interface TokenGeneratorHooks {
  /** Current time, UTC unix seconds. */
  now?: () => number;
  /** Random bytes (IV, jti). */
  randomBytes?: (n: number) => Uint8Array;
}

interface Keys {
  aesKey: CryptoKey;
  contentKeyHex: string;
  kid: string;
  header: string; // base64url of the canonical header
}

/**
 * The global WebCrypto. Node has it unflagged from 20 on (18 needs
 * --experimental-global-webcrypto). No `node:crypto` fallback: a static
 * import would break browser and edge bundles, and `buildClaims` needs
 * random bytes synchronously, which a dynamic import cannot give.
 */
function webCrypto(): Crypto {
  const c = globalThis.crypto;
  if (!c?.subtle || typeof c.getRandomValues !== 'function') {
    throw new RelayAPIError(
      'relayapi-sdk needs WebCrypto (globalThis.crypto): use Node >= 20, Deno, Bun, a browser or an edge runtime',
    );
  }
  return c;
}

const subtle = (): SubtleCrypto => webCrypto().subtle;

/** TS 5.7+ types typed arrays over ArrayBufferLike; WebCrypto wants ArrayBuffer-backed views. */
const buf = (u: Uint8Array): BufferSource => u as unknown as BufferSource;

function defaultRandomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  webCrypto().getRandomValues(out);
  return out;
}

/** Derives `content_key` (HKDF-SHA256, empty salt, info "relayapi token v2") and `kid`. */
export async function deriveContentKey(aesKeyHex: string): Promise<{ contentKey: Uint8Array; kid: string }> {
  if (typeof aesKeyHex !== 'string' || aesKeyHex.length !== 64 || !isHex(aesKeyHex)) {
    throw new InvalidArgumentError('aesKey', 'aesKey must be 64 hex characters (32 bytes)');
  }
  const s = subtle();
  const ikm = await s.importKey('raw', buf(hexToBytes(aesKeyHex)), 'HKDF', false, ['deriveBits']);
  const bits = await s.deriveBits(
    // An empty salt is HKDF's 32 zero bytes (RFC 5869 §2.2); spelled out for runtimes that dislike empty salts.
    { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(32), info: buf(utf8(TOKEN_INFO)) },
    ikm,
    256,
  );
  const contentKey = new Uint8Array(bits);
  const digest = new Uint8Array(await s.digest('SHA-256', buf(contentKey)));
  return { contentKey, kid: bytesToHex(digest).slice(0, 16) };
}

function toUnixSeconds(ms: number): number {
  return Math.floor(ms / 1000);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const p = Object.getPrototypeOf(v);
  return p === Object.prototype || p === null;
}

/**
 * Mints (and decodes) v2 tokens under one `.rai` key.
 *
 * ```ts
 * const gen = new TokenGenerator(rai.crypto.aes_key);
 * const token = await gen.createToken({ apiKey: 'sk-...', maxCalls: 10 });
 * ```
 */
export class TokenGenerator {
  #aesKeyHex: string;
  #keys: Promise<Keys> | undefined;
  #now: () => number;
  #random: (n: number) => Uint8Array;

  /**
   * @param aesKey the `.rai` `crypto.aes_key` (64 hex characters).
   * @param hooks test hooks only (fixed clock / random bytes); omit in production.
   * @throws {InvalidArgumentError} if `aesKey` is not 64 hex characters (the key is never echoed).
   */
  constructor(aesKey: string, hooks: TokenGeneratorHooks = {}) {
    if (typeof aesKey !== 'string' || aesKey.length !== 64 || !isHex(aesKey)) {
      throw new InvalidArgumentError(
        'aesKey',
        'aesKey must be the 64 hex characters of crypto.aes_key in your .rai file; generate one with `relayapi gen-config`',
      );
    }
    this.#aesKeyHex = aesKey;
    this.#now = hooks.now ?? (() => toUnixSeconds(Date.now()));
    this.#random = hooks.randomBytes ?? defaultRandomBytes;
  }

  #getKeys(): Promise<Keys> {
    if (!this.#keys) {
      this.#keys = (async () => {
        const { contentKey, kid } = await deriveContentKey(this.#aesKeyHex);
        const aesKey = await subtle().importKey('raw', buf(contentKey), 'AES-GCM', false, ['encrypt', 'decrypt']);
        const header = b64url(utf8(`{"alg":"dir","enc":"A256GCM","kid":"${kid}"}`));
        return { aesKey, contentKeyHex: bytesToHex(contentKey), kid, header };
      })();
      this.#keys.catch(() => {
        this.#keys = undefined;
      });
    }
    return this.#keys;
  }

  /** The public key id (`kid`) of this key: first 16 hex of SHA-256(content key). */
  async kid(): Promise<string> {
    return (await this.#getKeys()).kid;
  }

  /** The HKDF content key, lower-case hex. As secret as `aes_key`. @internal */
  async _contentKeyHex(): Promise<string> {
    return (await this.#getKeys()).contentKeyHex;
  }

  /**
   * Builds the claims for `options` (jti = 16 random bytes, `iat` = now UTC,
   * `exp` = now + `expireSeconds`) and encrypts them.
   * @throws {InvalidArgumentError} for a bad option.
   */
  async createToken(options: CreateTokenOptions): Promise<string> {
    return this.encryptToken(this.buildClaims(options));
  }

  /**
   * The claims `createToken(options)` would encrypt (fresh `jti`, current time).
   * @throws {InvalidArgumentError} for a bad option.
   */
  buildClaims(options: CreateTokenOptions): TokenClaims {
    if (!isPlainObject(options)) {
      throw new InvalidArgumentError('options', 'createToken expects an options object such as { apiKey: "sk-..." }');
    }
    const o = options;
    // A misspelt limit (`max_calls`, `expireDays`) must not mint a token
    // without that limit.
    for (const name of Object.keys(o)) {
      if (!KNOWN_OPTIONS.has(name)) {
        const hint = KNOWN_OPTIONS.has(camel(name)) ? `; did you mean ${camel(name)}?` : '';
        throw new InvalidArgumentError(name, `unknown option ${JSON.stringify(name)}${hint} (options are camelCase: apiKey, maxCalls, expireSeconds, ...)`);
      }
    }
    const present = (v: unknown) => v !== undefined && v !== null;
    if (present(o.apiKey) && present(o.keyRef)) {
      throw new InvalidArgumentError(
        'keyRef',
        "give apiKey (the provider key, carried encrypted in the token) or keyRef (the name of a credential held in the relay's config), not both",
      );
    }
    if (present(o.keyRef)) {
      if (typeof o.keyRef !== 'string' || o.keyRef.length === 0) {
        throw new InvalidArgumentError('keyRef', "keyRef must be the name of a credential in the relay's config (a non-empty string)");
      }
    } else if (typeof o.apiKey !== 'string' || o.apiKey.length === 0) {
      throw new InvalidArgumentError(
        'apiKey',
        'apiKey must be a non-empty string (the provider API key), or pass keyRef naming a credential held by the relay so the token carries no key',
      );
    } else {
      const problem = apiKeyProblem(o.apiKey);
      if (problem) throw new InvalidArgumentError('apiKey', `apiKey ${problem}`);
    }
    const provider = o.provider ?? DEFAULT_PROVIDER;
    if (typeof provider !== 'string' || provider.length === 0) {
      throw new InvalidArgumentError('provider', 'provider must be a non-empty string such as "openai"');
    }
    const expireSeconds = o.expireSeconds ?? DEFAULT_EXPIRE_SECONDS;
    if (typeof expireSeconds !== 'number' || !Number.isSafeInteger(expireSeconds) || expireSeconds <= 0) {
      throw new InvalidArgumentError(
        'expireSeconds',
        'expireSeconds must be a positive integer number of seconds (e.g. 600 for 10 minutes)',
      );
    }
    if (present(o.maxCalls) && (typeof o.maxCalls !== 'number' || !Number.isInteger(o.maxCalls) || o.maxCalls < 1)) {
      throw new InvalidArgumentError('maxCalls', 'maxCalls must be an integer >= 1, or omitted for no limit');
    }
    if (present(o.maxCalls) && !Number.isSafeInteger(o.maxCalls)) {
      throw new InvalidArgumentError(
        'maxCalls',
        `maxCalls must be at most ${Number.MAX_SAFE_INTEGER} (2^53 - 1, the largest integer a JavaScript number holds exactly), or omitted for no limit`,
      );
    }
    if (present(o.model) && (typeof o.model !== 'string' || o.model.length === 0)) {
      throw new InvalidArgumentError('model', 'model must be a non-empty string, or omitted');
    }
    if (
      present(o.models) &&
      (!Array.isArray(o.models) || o.models.length === 0 || !o.models.every((m) => typeof m === 'string' && m.length > 0))
    ) {
      throw new InvalidArgumentError('models', 'models must be a non-empty array of non-empty strings, or omitted');
    }
    if (present(o.sub) && typeof o.sub !== 'string') {
      throw new InvalidArgumentError('sub', 'sub must be a string, or omitted');
    }
    let extInfo: string | undefined;
    if (present(o.extInfo)) {
      if (typeof o.extInfo === 'string') extInfo = o.extInfo;
      else if (isPlainObject(o.extInfo)) {
        // Keys sorted and numbers written as the Python SDK does, so both mint the same bytes.
        try {
          extInfo = canonicalJson(o.extInfo);
        } catch (e) {
          throw new InvalidArgumentError('extInfo', `extInfo must be JSON-serialisable (${(e as Error).message})`);
        }
      } else throw new InvalidArgumentError('extInfo', 'extInfo must be a string or a plain object, or omitted');
    }
    // Policy options, keyed by option name (null = absent, like every option).
    const policy: Record<string, unknown> = {};
    for (const option of Object.values(POLICY_OPTIONS)) {
      if (present(o[option])) policy[option] = o[option];
    }
    const problem = findPolicyProblem(policy, (claim) => POLICY_OPTIONS[claim] ?? claim);
    if (problem) throw new InvalidArgumentError(problem.claim, problem.message);
    const iat = this.#now();
    if (!Number.isSafeInteger(iat + expireSeconds)) {
      throw new InvalidArgumentError(
        'expireSeconds',
        `expireSeconds is too large: now + expireSeconds must be at most ${Number.MAX_SAFE_INTEGER} (2^53 - 1, the largest integer a JavaScript number holds exactly), i.e. expireSeconds <= ${Number.MAX_SAFE_INTEGER - iat}; tokens are meant to be short-lived, e.g. 600`,
      );
    }
    const claims: TokenClaims = {
      jti: b64url(this.#random(16)),
      iat,
      exp: iat + expireSeconds,
      provider,
    };
    if (present(o.keyRef)) claims.key_ref = o.keyRef as string;
    else claims.api_key = o.apiKey as string;
    if (present(o.maxCalls)) claims.max_calls = o.maxCalls as number;
    if (present(o.model)) claims.model = o.model as string;
    if (present(o.models)) claims.models = [...(o.models as string[])];
    if (present(o.sub)) claims.sub = o.sub as string;
    if (extInfo !== undefined) claims.ext_info = extInfo;
    const out = claims as unknown as Record<string, unknown>;
    for (const [claim, option] of Object.entries(POLICY_OPTIONS)) {
      const v = policy[option];
      if (v !== undefined) out[claim] = Array.isArray(v) ? [...v] : v;
    }
    return claims;
  }

  /**
   * Encrypts a complete claims set (wire names: `jti`, `iat`, `exp`,
   * `provider`, `api_key`, …, `x_*`) with a fresh random IV. A claim set to
   * `undefined` is absent, as is a named claim set to `null` (`x_*` claims
   * may be `null`). The claims are checked with the relay's rules first, so
   * a token that would be refused is never minted.
   * @throws {InvalidArgumentError} naming the bad claim.
   */
  async encryptToken(claims: TokenClaims): Promise<string> {
    return this._mintWith({ claims, iv: this.#random(12) });
  }

  /**
   * TEST HOOK (not part of the stable API): mints with a caller-chosen IV so
   * the shared vectors reproduce byte for byte. Never reuse an IV in
   * production: AES-GCM breaks.
   * @internal
   */
  async _mintWith({ claims: given, iv }: { claims: TokenClaims; iv: Uint8Array }): Promise<string> {
    // `sub: undefined` / `model: null` mean absent, as the types and Python's None say.
    const claims = presentClaims(given) as TokenClaims;
    const problem = findClaimsProblem(claims);
    if (problem) {
      throw new InvalidArgumentError(problem.claim, problem.message);
    }
    if (!(iv instanceof Uint8Array) || iv.length !== 12) {
      throw new InvalidArgumentError('iv', 'iv must be 12 bytes');
    }
    const { aesKey, header } = await this.#getKeys();
    const sealed = new Uint8Array(
      await subtle().encrypt(
        { name: 'AES-GCM', iv: buf(iv), additionalData: buf(utf8(header)), tagLength: 128 },
        aesKey,
        buf(utf8(canonicalClaimsJson(claims))),
      ),
    );
    const ciphertext = sealed.subarray(0, sealed.length - 16);
    const tag = sealed.subarray(sealed.length - 16);
    const token = `${header}..${b64url(iv)}.${b64url(ciphertext)}.${b64url(tag)}`;
    if (token.length > MAX_TOKEN_LEN) {
      throw new InvalidArgumentError(
        'claims',
        `the token would be ${token.length} bytes, over the relay's limit of ${MAX_TOKEN_LEN}; shorten ext_info / x_ claims`,
      );
    }
    return token;
  }

  /**
   * Decodes a token minted under this key, with the relay's rules
   * (docs/token-format.md §3–§6), at `now` (UTC seconds, default the clock).
   *
   * Limitation: `JSON.parse` cannot see duplicate member names or tell
   * `1700000000.0` from `1700000000`, so those (relay-refused) tokens decode
   * here. The relay remains the authority.
   *
   * @throws {TokenError} with `code` `token_invalid`, `token_expired` or `token_not_yet_valid`.
   */
  async decryptToken(token: string, options: { now?: number } = {}): Promise<DecodedToken> {
    const invalid = () => new TokenError('token_invalid');
    if (typeof token !== 'string' || token.length > MAX_TOKEN_LEN) throw invalid();
    const parts = token.split('.');
    if (parts.length !== 5 || parts[1] !== '') throw invalid();
    const [h64, , iv64, ct64, tag64] = parts as [string, string, string, string, string];
    const headerBytes = b64urlDecode(h64);
    const headerText = headerBytes && fromUtf8(headerBytes);
    let header: unknown;
    try {
      header = headerText === null ? null : JSON.parse(headerText);
    } catch {
      throw invalid();
    }
    if (header === null || typeof header !== 'object' || Array.isArray(header)) throw invalid();
    const hdr = header as Record<string, unknown>;
    if (hdr.alg !== 'dir' || hdr.enc !== 'A256GCM' || typeof hdr.kid !== 'string') throw invalid();
    if ('zip' in hdr || 'crit' in hdr) throw invalid();
    const keys = await this.#getKeys();
    if (hdr.kid !== keys.kid) throw invalid();
    const iv = b64urlDecode(iv64);
    const ct = b64urlDecode(ct64);
    const tag = b64urlDecode(tag64);
    if (!iv || iv.length !== 12 || !tag || tag.length !== 16 || !ct) throw invalid();
    const sealed = new Uint8Array(ct.length + 16);
    sealed.set(ct);
    sealed.set(tag, ct.length);
    let plain: Uint8Array;
    try {
      plain = new Uint8Array(
        await subtle().decrypt(
          // AAD: the header segment exactly as received, never re-serialised.
          { name: 'AES-GCM', iv: buf(iv), additionalData: buf(utf8(h64)), tagLength: 128 },
          keys.aesKey,
          buf(sealed),
        ),
      );
    } catch {
      throw invalid();
    }
    const text = fromUtf8(plain);
    let claims: unknown;
    try {
      claims = text === null ? null : JSON.parse(text);
    } catch {
      throw invalid();
    }
    // Decoding follows the relay, which accepts (never-matching) IPv4-mapped ips items.
    if (findClaimsProblem(claims, false)) throw invalid();
    const c = claims as TokenClaims;
    const now = options.now ?? this.#now();
    if (now >= c.exp) throw new TokenError('token_expired');
    if (c.iat > now + LEEWAY_SECS || (c.nbf !== undefined && c.nbf > now + LEEWAY_SECS)) {
      throw new TokenError('token_not_yet_valid');
    }
    return { claims: c, header: hdr, effectiveModel: effectiveModel(c) };
  }
}
