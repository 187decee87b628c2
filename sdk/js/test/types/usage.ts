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
