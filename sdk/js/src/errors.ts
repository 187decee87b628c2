/**
 * Error classes. Every error the SDK throws is a {@link RelayAPIError} with a
 * stable string `code` (in the style of panva/jose `src/util/errors.ts`):
 * branch on `err.code` or `instanceof`, never on `err.message`.
 *
 * | class                  | `code`                                               |
 * |------------------------|------------------------------------------------------|
 * | `RelayAPIError`        | `relayapi_error`                                     |
 * | `ConfigError`          | `config_invalid`                                     |
 * | `InvalidArgumentError` | `invalid_argument`                                   |
 * | `TokenError`           | `token_invalid`, `token_expired`, `token_not_yet_valid` |
 * | `APIError`             | the relay's / provider's error code (`token_expired`, `token_exhausted`, …), else `http_<status>` |
 * | `APIConnectionError`   | `connection_error` or `timeout`                      |
 *
 * Messages never contain key material, provider API keys or tokens.
 */

/** Base class of every error thrown by `relayapi-sdk`. */
export class RelayAPIError extends Error {
  /** Stable machine-readable code of this error class. */
  static code = 'relayapi_error';
  /** Stable machine-readable code; see the table in the module docs. */
  code: string = 'relayapi_error';

  constructor(message?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = this.constructor.name;
  }
}

/** One problem in a `.rai` config: the field path and what to do about it. */
export interface ConfigProblem {
  /** Field path, e.g. `crypto.aes_key`, or `(root)`. */
  field: string;
  /** What is wrong and how to fix it. Never contains the field's value. */
  problem: string;
}

/**
 * The `.rai` config is missing, not JSON, or invalid. `problems` lists every
 * bad field at once; the message names each field and the fix, and never
 * echoes key material.
 */
export class ConfigError extends RelayAPIError {
  static override code = 'config_invalid';
  override code = 'config_invalid';
  /** Every problem found (empty for I/O or syntax errors). */
  readonly problems: ConfigProblem[];

  constructor(message: string, problems: ConfigProblem[] = [], options?: { cause?: unknown }) {
    super(message, options);
    this.problems = problems;
  }
}

/** An argument is out of range or of the wrong type (`maxCalls: 0`, `expireSeconds: -1`, …). */
export class InvalidArgumentError extends RelayAPIError {
  static override code = 'invalid_argument';
  override code = 'invalid_argument';
  /** Name of the offending argument, e.g. `maxCalls`. */
  readonly argument: string;

  constructor(argument: string, message: string) {
    super(message);
    this.argument = argument;
  }
}

/** The three decoder outcomes of docs/token-format.md §6. */
export type TokenErrorCode = 'token_invalid' | 'token_expired' | 'token_not_yet_valid';

/**
 * A token failed to decode ({@link TokenGenerator.decryptToken}). Like the
 * relay, it says only which of the three codes applies, never why.
 */
export class TokenError extends RelayAPIError {
  static override code = 'token_invalid';
  override code: TokenErrorCode;

  constructor(code: TokenErrorCode) {
    super(
      code === 'token_expired'
        ? 'token has expired'
        : code === 'token_not_yet_valid'
          ? 'token is not yet valid'
          : 'token is invalid',
    );
    this.code = code;
  }
}

/**
 * The relay (or the provider behind it) answered with a non-2xx status.
 * `code`, `type` and `message` come from the OpenAI-style body
 * `{"error": {"message", "type", "code"}}` when there is one.
 */
export class APIError extends RelayAPIError {
  static override code = 'api_error';
  override code: string;
  /** HTTP status. */
  readonly status: number;
  /** `x-request-id` response header (quote it in bug reports), or `undefined`. */
  readonly requestId: string | undefined;
  /** `error.type` of the body (`authentication_error`, …), or `undefined`. */
  readonly type: string | undefined;
  /** The parsed JSON body, or the raw text if it was not JSON. */
  readonly body: unknown;
  /** Response headers. */
  readonly headers: Headers | undefined;

  constructor(init: {
    status: number;
    code?: string | undefined;
    type?: string | undefined;
    message?: string | undefined;
    requestId?: string | undefined;
    body?: unknown;
    headers?: Headers | undefined;
  }) {
    const code = init.code || `http_${init.status}`;
    super(`${init.status} ${code}: ${init.message || 'request failed'}`);
    this.code = code;
    this.status = init.status;
    this.type = init.type;
    this.requestId = init.requestId;
    this.body = init.body;
    this.headers = init.headers;
  }
}

/** The relay could not be reached, or the request timed out (`code` `timeout`). */
export class APIConnectionError extends RelayAPIError {
  static override code = 'connection_error';
  override code: 'connection_error' | 'timeout';

  constructor(message: string, code: 'connection_error' | 'timeout', options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}
