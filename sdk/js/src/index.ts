/**
 * relayapi-sdk: mint short-lived RelayAPI capability tokens (JWE `dir` +
 * `A256GCM`, docs/token-format.md) and call AI providers through a RelayAPI
 * relay. Zero runtime dependencies; WebCrypto only (Node >= 20, Deno, Bun,
 * browsers, Cloudflare Workers, Vercel Edge).
 *
 * Layout: `config` (.rai parsing, base URL), `claims` (claim rules and the
 * canonical JSON), `token` (HKDF + AES-GCM minting/decoding), `client`
 * (`RelayAPIClient`), `errors`, `encoding` (internal helpers).
 */

export { RelayAPIClient, API_PATHS, DEFAULT_TIMEOUT_MS } from './client.js';
export type { ApiType, ChatMessage, RelayAPIClientOptions } from './client.js';
export {
  TokenGenerator,
  deriveContentKey,
  TOKEN_INFO,
  MAX_TOKEN_LEN,
  DEFAULT_PROVIDER,
  DEFAULT_EXPIRE_SECONDS,
} from './token.js';
export type { CreateTokenOptions, DecodedToken, TokenGeneratorHooks } from './token.js';
export { canonicalClaimsJson, effectiveModel, MIN_JTI_LEN, MAX_JTI_LEN, LEEWAY_SECS } from './claims.js';
export type { TokenClaims } from './claims.js';
export { parseRaiConfig, parseRaiJson, raiBaseUrl, raiOrigin, normaliseBasePath } from './config.js';
export type { RaiConfig } from './config.js';
export {
  RelayAPIError,
  ConfigError,
  InvalidArgumentError,
  TokenError,
  APIError,
  APIConnectionError,
} from './errors.js';
export type { ConfigProblem, TokenErrorCode } from './errors.js';

/** Version of this package. */
export const VERSION = '2.0.0';
