// Type-level tests of the published declarations (dist/esm/*.d.ts), run by
// builds.test.mjs with `tsc -p test/types`. Each `@ts-expect-error` line
// must fail to type-check (tsc reports an unused directive otherwise), every
// other line must type-check. Never executed.
import { RelayAPIClient, type CreateTokenOptions } from 'relayapi-sdk';

export async function usage(relay: RelayAPIClient): Promise<void> {
  // null means "not set" for every option, provider and expireSeconds included.
  await relay.createToken({ apiKey: 'k', provider: null, expireSeconds: null, maxCalls: null });
  const opts: CreateTokenOptions = { apiKey: 'k', provider: 'openai', expireSeconds: 600 };
  await relay.createToken(opts);
  // @ts-expect-error expireSeconds is a number of seconds
  await relay.createToken({ apiKey: 'k', expireSeconds: '600' });
}

export async function lists(relay: RelayAPIClient, token: string): Promise<void> {
  // Readonly arrays (`as const`, ReadonlyArray) are accepted by every list option.
  const paths = ['chat/completions'] as const;
  const models: readonly string[] = ['gpt-4o-mini'];
  await relay.createToken({ apiKey: 'k', models, paths, origins: ['https://app.example.com'] as const, ips: models, methods: ['POST'] as const });
  // apiType is ApiType: a typo no longer type-checks.
  relay.generateApiUrlWithToken(token, 'chat_completions');
  relay.generateApiUrlWithToken(token, '');
  relay.generateApiUrlWithToken(token);
  // @ts-expect-error 'chat_completion' is not an ApiType
  relay.generateApiUrlWithToken(token, 'chat_completion');
}

export async function credentials(relay: RelayAPIClient, useRef: boolean, key: string): Promise<void> {
  // Exactly one of apiKey / keyRef is checked at run time; these valid calls must keep type-checking.
  await relay.createToken({ apiKey: process.env.OPENAI_API_KEY });
  await relay.createToken({ keyRef: 'openai-main' });
  await relay.createToken({ apiKey: useRef ? undefined : key, keyRef: useRef ? 'openai-main' : undefined });
}
