// End-to-end against the real relay: tokens minted by this SDK are accepted
// by `relayapi serve` (with `relayapi-mock` as OpenAI), through the SDK's own
// calls and through the official `openai` npm package (streaming and not),
// also with every policy claim and with keyRef, and the examples chat.mjs /
// stream.mjs / embeddings.mjs keep working.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import OpenAI from 'openai';
import { RelayAPIClient, APIError } from 'relayapi-sdk';
import { startStack, childEnv, SDK_DIR } from './harness.mjs';

const MODEL = 'gpt-4o-mini';
let stack;
let client;

before(async () => {
  stack = await startStack();
  client = await RelayAPIClient.fromFile(stack.raiPath);
});
after(async () => {
  await stack?.stop();
});

test('healthCheck reads the relay health JSON', async () => {
  assert.equal(client.baseUrl, `${stack.relay.url}/relayapi/`);
  const health = await client.healthCheck();
  assert.equal(typeof health, 'object');
  assert.ok('status' in health, JSON.stringify(health));
});

test('SDK chatCompletions with a JS-minted token', async () => {
  const token = await client.createToken({ apiKey: stack.mockKey, maxCalls: 3, model: MODEL, sub: 'user-1' });
  const resp = await client.chatCompletions(token, [{ role: 'user', content: 'hello from sdk' }], MODEL);
  assert.equal(resp.choices[0].message.content, 'mock reply to: hello from sdk');
});

test('SDK embeddings through the relay', async () => {
  const token = await client.createToken({ apiKey: stack.mockKey });
  const resp = await client.embeddings(token, ['a', 'b'], 'text-embedding-3-small');
  assert.equal(resp.data.length, 2);
});

test('official openai SDK: URL-embedded token from generateUrl (non-streaming)', async () => {
  const baseURL = await client.generateUrl({ apiKey: stack.mockKey, expireSeconds: 60 });
  const openai = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
  const resp = await openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'url' }] });
  assert.equal(resp.choices[0].message.content, 'mock reply to: url');
});

test('official openai SDK: header-passed token, streaming', async () => {
  const token = await client.createToken({ apiKey: stack.mockKey, models: [MODEL, 'gpt-4o'] });
  const openai = new OpenAI({ baseURL: client.baseUrl, apiKey: token, maxRetries: 0 });
  const stream = await openai.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'stream from sdk' }],
    stream: true,
  });
  const parts = [];
  for await (const chunk of stream) {
    const piece = chunk.choices[0]?.delta?.content;
    if (piece) parts.push(piece);
  }
  assert.ok(parts.length >= 3, `only ${parts.length} chunks`);
  assert.ok(parts.join('').startsWith('mock reply to: stream from sdk'), parts.join(''));
});

test('relay refusals surface as APIError with status, code and requestId', async () => {
  // token_invalid: minted under another key
  const stranger = new RelayAPIClient({ ...stack.rai, crypto: { ...stack.rai.crypto, aes_key: 'ab'.repeat(32) } });
  const foreign = await stranger.createToken({ apiKey: stack.mockKey });
  await assert.rejects(client.chatCompletions(foreign, [{ role: 'user', content: 'x' }], MODEL), (e) => {
    assert.ok(e instanceof APIError, String(e));
    assert.equal(e.status, 401);
    assert.equal(e.code, 'token_invalid');
    assert.ok(e.requestId && e.requestId.length > 0, 'x-request-id');
    return true;
  });
  // token_exhausted after max_calls
  const once = await client.createToken({ apiKey: stack.mockKey, maxCalls: 1 });
  await client.chatCompletions(once, [{ role: 'user', content: 'one' }], MODEL);
  await assert.rejects(client.chatCompletions(once, [{ role: 'user', content: 'two' }], MODEL), (e) => e.status === 429 && e.code === 'token_exhausted');
  // model_not_allowed
  const pinned = await client.createToken({ apiKey: stack.mockKey, models: ['gpt-4o'] });
  await assert.rejects(client.chatCompletions(pinned, [{ role: 'user', content: 'x' }], MODEL), (e) => e.status === 403 && e.code === 'model_not_allowed');
  // images through the relay, and a provider error passed through (the mock refuses n = 0)
  const img = await client.createToken({ apiKey: stack.mockKey });
  const images = await client.imagesGenerations(img, 'a cat', { n: 2 });
  assert.equal(images.data.length, 2);
  await assert.rejects(client.imagesGenerations(img, 'a cat', { n: 0 }), (e) => e instanceof APIError && e.status === 400);
});

// ---- the policy claims ------------------------------------------------------

const ORIGIN = 'https://app.example.com';
/** Every policy option, chosen so that the requests below satisfy them all. */
const EVERY_POLICY_OPTION = {
  origins: [ORIGIN, '*.example.org', 'http://localhost:5173'],
  ips: ['127.0.0.0/8', '::1'],
  paths: ['chat/completions', 'embeddings'],
  methods: ['POST'],
  rps: 50,
  burst: 100,
  concurrency: 4,
  maxTokens: 1_000_000,
  maxBodyBytes: 65536,
};

test('a JS-minted token with every policy claim is accepted by the relay', async () => {
  const token = await client.createToken({ apiKey: stack.mockKey, expireSeconds: 120, maxCalls: 5, ...EVERY_POLICY_OPTION });
  const openai = new OpenAI({
    baseURL: client.generateApiUrlWithToken(token),
    apiKey: 'unused',
    maxRetries: 0,
    defaultHeaders: { Origin: ORIGIN },
  });
  const resp = await openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'policy' }], max_tokens: 16 });
  assert.equal(resp.choices[0].message.content, 'mock reply to: policy');
  const stream = await openai.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'policy stream' }],
    max_tokens: 16,
    stream: true,
  });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  assert.ok(text.startsWith('mock reply to: policy stream'), text);
});

test('a keyRef token carries no provider key and reaches the credential lookup', async () => {
  const token = await client.createToken({ keyRef: 'team-openai', expireSeconds: 120, ...EVERY_POLICY_OPTION });
  const { claims } = await client.tokenGenerator.decryptToken(token);
  assert.equal(claims.key_ref, 'team-openai');
  assert.ok(!('api_key' in claims) && !JSON.stringify(claims).includes(stack.mockKey));
  // Decoded (not token_invalid): this relay holds no credential of that name.
  const browserLike = await RelayAPIClient.fromFile(stack.raiPath, { headers: { Origin: ORIGIN } });
  await assert.rejects(
    browserLike.chatCompletions(token, [{ role: 'user', content: 'x' }], MODEL, { max_tokens: 16 }),
    (e) => e instanceof APIError && e.status === 400 && e.code === 'credential_unknown',
  );
});

const run = promisify(execFile);
for (const example of ['chat.mjs', 'stream.mjs', 'embeddings.mjs']) {
  test(`examples/${example} runs against mock + relay`, async () => {
    const { stdout } = await run(process.execPath, [join(SDK_DIR, 'examples', example)], {
      cwd: join(SDK_DIR, 'examples'),
      env: childEnv({ RELAYAPI_RAI: stack.raiPath, RELAYAPI_PROVIDER_KEY: stack.mockKey }),
      timeout: 30_000,
    });
    if (example === 'embeddings.mjs') assert.match(stdout, /^1 embedding\(s\), dimension \d+/);
    else assert.match(stdout, /^mock reply to: /);
  });
}
