/**
 * `RelayAPIClient`: what a backend needs — load the `.rai`, mint tokens and
 * token URLs, and (for server-side use and smoke tests) call the relay.
 */

import { normaliseBasePath, parseRaiConfig, parseRaiJson, raiBaseUrl, raiOrigin, type RaiConfig } from './config.js';
import { APIConnectionError, APIError, ConfigError, InvalidArgumentError } from './errors.js';
import { fromUtf8 } from './encoding.js';
import { TokenGenerator, type CreateTokenOptions, type TokenGeneratorHooks } from './token.js';

/** `apiType` values of {@link RelayAPIClient.generateApiUrlWithToken} and the paths they map to. */
export const API_PATHS = {
  chat_completions: 'chat/completions',
  images_generations: 'images/generations',
  embeddings: 'embeddings',
} as const;

/** `""` (the token base URL) or one of the keys of {@link API_PATHS}. */
export type ApiType = '' | keyof typeof API_PATHS;

/** Default HTTP timeout of the client's own requests, milliseconds. */
export const DEFAULT_TIMEOUT_MS = 60_000;
/** Longest `timeoutMs`: 2^31 - 1 ms, the longest delay `setTimeout` honours. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** Options of the client itself (not of the `.rai`). */
export interface RelayAPIClientOptions {
  /** `fetch` implementation (default `globalThis.fetch`). */
  fetch?: typeof fetch;
  /** Timeout of `healthCheck`/`chatCompletions`/… in ms (default 60000; positive, at most 2^31 - 1). */
  timeoutMs?: number;
  /** Extra headers sent with every request the client makes. */
  headers?: Record<string, string>;
  /** Test hooks for the token generator (fixed clock / random bytes). */
  hooks?: TokenGeneratorHooks;
}

/** One chat message (OpenAI shape; extra fields pass through). */
export interface ChatMessage {
  role: string;
  content: unknown;
  [key: string]: unknown;
}

/**
 * The backend client.
 *
 * ```ts
 * const client = await RelayAPIClient.fromFile('default.rai');
 * const url = await client.generateUrl({ apiKey: process.env.OPENAI_API_KEY!, expireSeconds: 600, maxCalls: 20 });
 * // hand `url` to the front end: new OpenAI({ baseURL: url, apiKey: 'unused' })
 * ```
 */
export class RelayAPIClient {
  #config: RaiConfig;
  #generator: TokenGenerator;
  #fetch: typeof fetch | undefined;
  #timeoutMs: number;
  #headers: Record<string, string>;

  /**
   * @param config a parsed `.rai` object (validated per docs/token-format.md §1).
   * @throws {ConfigError} listing every bad field; never echoes key material.
   */
  constructor(config: RaiConfig | Record<string, unknown>, options: RelayAPIClientOptions = {}) {
    if (typeof config === 'string') {
      throw new ConfigError(
        'RelayAPIClient expects a parsed .rai object; use RelayAPIClient.fromFile(path) for a file or RelayAPIClient.fromJSON(text) for its text',
      );
    }
    this.#config = parseRaiConfig(config);
    this.#generator = new TokenGenerator(this.#config.crypto.aes_key, options.hooks);
    this.#fetch = options.fetch;
    const t = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    // Timers clamp a delay above 2^31 - 1 ms (or Infinity) to 1 ms: every call would time out at once.
    if (typeof t !== 'number' || !Number.isFinite(t) || !(t > 0) || t > MAX_TIMEOUT_MS) {
      throw new InvalidArgumentError(
        'timeoutMs',
        `timeoutMs must be a positive, finite number of milliseconds, at most ${MAX_TIMEOUT_MS} (2^31 - 1, about 24.8 days: the longest timer delay JavaScript runtimes honour; got ${String(t)})`,
      );
    }
    this.#timeoutMs = t;
    this.#headers = { ...(options.headers ?? {}) };
  }

  /**
   * Loads a `.rai` file (Node, Deno, Bun: anywhere `node:fs/promises` exists).
   * @throws {ConfigError} if the file is missing, unreadable, not JSON or invalid.
   */
  static async fromFile(path: string, options: RelayAPIClientOptions = {}): Promise<RelayAPIClient> {
    if (typeof path !== 'string' || path.length === 0) {
      throw new InvalidArgumentError('path', 'path must be the path of a .rai file, e.g. "default.rai"');
    }
    let fs: { readFile(p: string): Promise<Uint8Array> };
    try {
      fs = await import('node:fs/promises');
    } catch (e) {
      throw new ConfigError(
        'RelayAPIClient.fromFile needs a file system (node:fs); on edge runtimes pass the parsed .rai object to new RelayAPIClient(config) or use RelayAPIClient.fromJSON(text)',
        [],
        { cause: e },
      );
    }
    let bytes: Uint8Array;
    try {
      bytes = await fs.readFile(path);
    } catch (e) {
      const code = (e as { code?: string }).code;
      throw new ConfigError(
        code === 'ENOENT'
          ? `.rai file not found: ${path}; start the relay once (it writes default.rai) or run \`relayapi gen-config\``
          : `cannot read .rai file ${path} (${code ?? 'I/O error'}); check the path and its permissions`,
      );
    }
    // Strict UTF-8, as the relay reads it: no silent U+FFFD for a bad byte (a BOM is kept, and refused).
    const text = fromUtf8(bytes);
    if (text === null) throw new ConfigError(`${path}: not UTF-8 text; generate a fresh file with \`relayapi gen-config\``);
    return new RelayAPIClient(parseRaiJson(text, path), options);
  }

  /**
   * Parses `.rai` JSON text (e.g. from a secret environment variable on an edge runtime).
   * @throws {ConfigError}
   */
  static fromJSON(text: string, options: RelayAPIClientOptions = {}): RelayAPIClient {
    if (typeof text !== 'string') throw new ConfigError('fromJSON expects the text of a .rai file');
    return new RelayAPIClient(parseRaiJson(text), options);
  }

  /** The relay base URL from the `.rai` `server` block, e.g. `http://localhost:8840/relayapi/`. */
  get baseUrl(): string {
    return raiBaseUrl(this.#config);
  }

  /** The `.rai` `server` block (host, port, normalised base_path). No key material. */
  get server(): RaiConfig['server'] {
    return { ...this.#config.server, base_path: normaliseBasePath(this.#config.server.base_path) };
  }

  /** The token generator for this `.rai` key. */
  get tokenGenerator(): TokenGenerator {
    return this.#generator;
  }

  /**
   * Mints a token.
   * @throws {InvalidArgumentError} for a bad option (empty apiKey, maxCalls < 1, expireSeconds <= 0, bad models…).
   */
  createToken(options: CreateTokenOptions): Promise<string> {
    return this.#generator.createToken(options);
  }

  /** Mints a token and returns `<baseUrl><token>/`, ready for any official SDK's `baseURL`. */
  async generateUrl(options: CreateTokenOptions): Promise<string> {
    return `${this.baseUrl}${await this.createToken(options)}/`;
  }

  /**
   * `<baseUrl><token>/` plus the endpoint path of `apiType`:
   * `chat_completions` → `chat/completions`, `images_generations` →
   * `images/generations`, `embeddings` → `embeddings`, `""` → nothing.
   * @throws {InvalidArgumentError} for an empty token or an unknown apiType.
   */
  generateApiUrlWithToken(token: string, apiType: ApiType = ''): string {
    if (typeof token !== 'string' || token.length === 0 || /[/?#\s]/.test(token)) {
      throw new InvalidArgumentError('token', 'token must be a token string from createToken');
    }
    const base = `${this.baseUrl}${token}/`;
    if (apiType === '' || apiType === undefined || apiType === null) return base;
    if (!Object.prototype.hasOwnProperty.call(API_PATHS, apiType)) {
      throw new InvalidArgumentError(
        'apiType',
        `unknown apiType ${JSON.stringify(apiType)}; use "", ${Object.keys(API_PATHS)
          .map((k) => `"${k}"`)
          .join(', ')}`,
      );
    }
    return base + API_PATHS[apiType as keyof typeof API_PATHS];
  }

  /** GET `<host:port>/health` → the relay's JSON (status, version, uptime, counters). */
  async healthCheck(): Promise<Record<string, unknown>> {
    return (await this.#request('GET', `${raiOrigin(this.#config)}/health`)) as Record<string, unknown>;
  }

  /**
   * POST `chat/completions` through the relay (non-streaming); returns the parsed JSON.
   * @throws {InvalidArgumentError} for `stream: true` (stream with the official SDK and `generateUrl`).
   */
  async chatCompletions(
    token: string,
    messages: ChatMessage[],
    model: string,
    extra: Record<string, unknown> = {},
  ): Promise<any> {
    if (!Array.isArray(messages)) throw new InvalidArgumentError('messages', 'messages must be an array');
    if (typeof model !== 'string' || model.length === 0) {
      throw new InvalidArgumentError('model', 'model must be a non-empty string');
    }
    return this.#request('POST', this.generateApiUrlWithToken(token, 'chat_completions'), {
      ...extra,
      model,
      messages,
    });
  }

  /** POST `images/generations` through the relay; returns the parsed JSON. */
  async imagesGenerations(token: string, prompt: string, extra: Record<string, unknown> = {}): Promise<any> {
    if (typeof prompt !== 'string' || prompt.length === 0) {
      throw new InvalidArgumentError('prompt', 'prompt must be a non-empty string');
    }
    return this.#request('POST', this.generateApiUrlWithToken(token, 'images_generations'), { ...extra, prompt });
  }

  /** POST `embeddings` through the relay; returns the parsed JSON. */
  async embeddings(
    token: string,
    input: string | string[] | number[] | number[][],
    model: string,
    extra: Record<string, unknown> = {},
  ): Promise<any> {
    if (typeof model !== 'string' || model.length === 0) {
      throw new InvalidArgumentError('model', 'model must be a non-empty string');
    }
    return this.#request('POST', this.generateApiUrlWithToken(token, 'embeddings'), { ...extra, model, input });
  }

  async #request(method: 'GET' | 'POST', url: string, body?: Record<string, unknown>): Promise<unknown> {
    if (body?.stream) {
      // The helpers parse one JSON answer; a stream would come back as raw SSE text.
      throw new InvalidArgumentError(
        'stream',
        "stream: true is not supported by the SDK's helpers: give generateUrl(...) to the official openai SDK as baseURL and stream there",
      );
    }
    const doFetch = this.#fetch ?? globalThis.fetch;
    if (typeof doFetch !== 'function') {
      throw new APIConnectionError('no fetch available; pass options.fetch', 'connection_error');
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.#timeoutMs);
    const headers: Record<string, string> = { accept: 'application/json', ...this.#headers };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    let text: string;
    try {
      try {
        res = await doFetch(url, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: controller.signal,
        });
        text = await res.text();
      } catch (e) {
        // Never include the URL: it carries the token.
        if (controller.signal.aborted) {
          throw new APIConnectionError(`request timed out after ${this.#timeoutMs} ms`, 'timeout');
        }
        throw new APIConnectionError(`cannot reach the relay at ${raiOrigin(this.#config)}`, 'connection_error', {
          cause: e,
        });
      }
    } finally {
      clearTimeout(timer);
    }
    let parsed: unknown = text;
    try {
      parsed = text.length ? JSON.parse(text) : null;
    } catch {
      /* keep the raw text */
    }
    if (!res.ok) {
      const err =
        parsed && typeof parsed === 'object' && 'error' in parsed && typeof (parsed as any).error === 'object'
          ? ((parsed as any).error as Record<string, unknown>)
          : {};
      const s = (v: unknown) => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : undefined);
      throw new APIError({
        status: res.status,
        code: s(err.code),
        type: s(err.type),
        message: s(err.message) ?? (typeof parsed === 'string' ? parsed.slice(0, 200) : undefined),
        requestId: res.headers.get('x-request-id') ?? undefined,
        body: parsed,
        headers: res.headers,
      });
    }
    return parsed;
  }
}
