// End-to-end: the official `openai` npm SDK and `jose` against a running relay.
//
// Starts `relayapi-mock` and `relayapi serve` on 127.0.0.1 port 0 (first stdout
// line `listening on http://HOST:PORT`), mints tokens with `relayapi token`,
// and checks what a browser front end would do. Binaries: RELAYAPI_BIN /
// RELAYAPI_MOCK_BIN, default <repo>/target/debug/. Run: `node --test tests/e2e/js/`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createCipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, readFileSync, existsSync, rmSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

import OpenAI, { toFile } from 'openai';
import { compactDecrypt, CompactEncrypt } from 'jose';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const RELAYAPI = process.env.RELAYAPI_BIN || join(REPO, 'target', 'debug', 'relayapi');
const MOCK = process.env.RELAYAPI_MOCK_BIN || join(REPO, 'target', 'debug', 'relayapi-mock');
const MODEL = 'gpt-4o-mini';
const STARTUP_MS = 30_000;

const childEnv = () => {
  const env = { ...process.env, NO_COLOR: '1' };
  for (const k of Object.keys(env)) if (k.startsWith('RELAYAPI_') || /_proxy$/i.test(k)) delete env[k];
  return env;
};

/** Spawns `argv`, resolves with the URL from its first stdout line. */
function start(name, argv, cwd) {
  const stderrFd = openSync(join(cwd, `${name}.stderr`), 'w');
  const child = spawn(argv[0], argv.slice(1), {
    cwd,
    env: childEnv(),
    stdio: ['ignore', 'pipe', stderrFd],
  });
  closeSync(stderrFd);
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name} printed no address within ${STARTUP_MS} ms`));
    }, STARTUP_MS);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited early with ${code}; see ${cwd}/${name}.stderr`));
    });
    const lines = createInterface({ input: child.stdout });
    lines.once('line', (line) => {
      clearTimeout(timer);
      const m = /^listening on (http:\/\/127\.0\.0\.1:(\d+))\/?$/.exec(line.trim());
      if (!m) return reject(new Error(`${name}: unexpected first line ${JSON.stringify(line)}`));
      child.stdout.resume(); // keep draining
      resolvePromise({ child, url: m[1], port: Number(m[2]) });
    });
  });
}

async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

let dir, mock, relay, raiPath, aesKey, contentKey, kid, mockKey;

function mint(...extra) {
  return execFileSync(
    RELAYAPI,
    ['token', '--rai', raiPath, '--provider', 'openai', '--api-key', mockKey, ...extra],
    { cwd: dir, env: childEnv(), encoding: 'utf8' },
  ).trim();
}

const relayBase = () => `${relay.url}/relayapi/`;
const pathClient = (token) =>
  new OpenAI({ baseURL: `${relayBase()}${token}/`, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });

before(async () => {
  for (const bin of [RELAYAPI, MOCK]) {
    assert.ok(existsSync(bin), `${bin} missing: run \`cargo build -p relayapi -p relayapi-mock\``);
  }
  dir = mkdtempSync(join(tmpdir(), 'relayapi-e2e-js-'));
  mockKey = `sk-mock-${randomBytes(16).toString('hex')}`;
  mock = await start('mock', [MOCK, '--listen', '127.0.0.1:0', '--api-key', mockKey], dir);
  const config = {
    server: { port: 0 },
    usage: { store: 'memory' },
    providers: { openai: { base_url: `${mock.url}/v1` } },
    legacy_tokens: true, // the earlier server's tokens and query-string base URLs
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  const rai = JSON.parse(
    execFileSync(RELAYAPI, ['gen-config', '--host', 'http://127.0.0.1', '--port', '1'], {
      cwd: dir,
      env: childEnv(),
      encoding: 'utf8',
    }),
  );
  raiPath = join(dir, 'e2e.rai');
  writeFileSync(raiPath, JSON.stringify(rai, null, 2));
  relay = await start(
    'relay',
    [RELAYAPI, 'serve', '--config', join(dir, 'config.json'), '--rai', raiPath],
    dir,
  );
  rai.server.port = relay.port; // for `relayapi token --url`
  writeFileSync(raiPath, JSON.stringify(rai, null, 2));
  aesKey = rai.crypto.aes_key;
  contentKey = Buffer.from(
    hkdfSync('sha256', Buffer.from(aesKey, 'hex'), Buffer.alloc(0), Buffer.from('relayapi token v2'), 32),
  );
  kid = createHash('sha256').update(contentKey).digest('hex').slice(0, 16);
});

after(async () => {
  await stop(relay?.child);
  await stop(mock?.child);
  if (dir && !process.env.KEEP_E2E_TMP) rmSync(dir, { recursive: true, force: true });
});

test('non-streaming chat through a path token', async () => {
  const client = pathClient(mint());
  const resp = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'hello from node' }],
  });
  assert.equal(resp.choices[0].message.content, 'mock reply to: hello from node');
  assert.equal(resp.model, MODEL);
});

test('embeddings: the SDK default (base64 on the wire) decodes to the float vectors', async () => {
  const client = pathClient(mint());
  const input = ['one', 'two'];
  // No encoding_format: openai 5+ asks for base64 and decodes it itself.
  const byDefault = await client.embeddings.create({ model: 'text-embedding-3-small', input, dimensions: 12 });
  const asFloats = await client.embeddings.create({
    model: 'text-embedding-3-small',
    input,
    dimensions: 12,
    encoding_format: 'float',
  });
  assert.equal(byDefault.data.length, 2);
  for (const [i, d] of byDefault.data.entries()) {
    assert.equal(d.embedding.length, 12);
    assert.deepEqual(d.embedding, asFloats.data[i].embedding.map(Math.fround));
  }
  assert.notDeepEqual(byDefault.data[0].embedding, byDefault.data[1].embedding);
});

test('--url prints a ready base URL', async () => {
  const baseURL = mint('--url');
  assert.ok(baseURL.startsWith(relayBase()) && baseURL.endsWith('/'), baseURL);
  const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
  const resp = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'url' }],
  });
  assert.equal(resp.choices[0].message.content, 'mock reply to: url');
});

test('streaming chat (for await)', async () => {
  const client = pathClient(mint());
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'stream from node' }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const parts = [];
  let usage = null;
  for await (const chunk of stream) {
    const c = chunk.choices?.[0]?.delta?.content;
    if (c) parts.push(c);
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(parts.length >= 3, `only ${parts.length} content chunks`);
  assert.ok(parts.join('').startsWith('mock reply to: stream from node'), parts.join(''));
  assert.ok(usage && usage.total_tokens > 0, 'usage chunk');
});

test('responses.create: output_text, and a stream whose deltas make the final text', async () => {
  const client = pathClient(mint());
  const resp = await client.responses.create({ model: MODEL, input: 'hello responses from node' });
  assert.equal(resp.object, 'response');
  assert.equal(resp.status, 'completed');
  assert.equal(resp.output_text, 'mock reply to: hello responses from node');
  assert.equal(resp.usage.total_tokens, resp.usage.input_tokens + resp.usage.output_tokens);

  const stream = await client.responses.create({
    model: MODEL,
    input: [{ role: 'user', content: [{ type: 'input_text', text: 'stream responses' }] }],
    stream: true,
  });
  const types = [];
  let text = '';
  let completed = null;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'response.output_text.delta') text += event.delta;
    if (event.type === 'response.completed') completed = event.response;
  }
  assert.equal(types[0], 'response.created');
  assert.equal(types.at(-1), 'response.completed');
  assert.ok(types.filter((t) => t === 'response.output_text.delta').length >= 3, types.join(','));
  assert.equal(text, 'mock reply to: stream responses');
  assert.equal(completed.output[0].content[0].text, text);
  assert.ok(completed.usage.output_tokens > 0 && completed.usage.total_tokens > completed.usage.output_tokens);
});

test('audio transcription: the SDK\'s multipart form is held to the model policy', async () => {
  const audio = Buffer.concat([Buffer.from('RIFF'), randomBytes(2048)]);
  const listed = pathClient(mint('--models', 'whisper-1'));
  const ok = await listed.audio.transcriptions.create({
    model: 'whisper-1',
    file: await toFile(audio, 'a.wav', { type: 'audio/wav' }),
  });
  assert.equal(ok.text, `Mock transcription (model whisper-1, ${audio.length} bytes of audio).`);
  await assert.rejects(
    listed.audio.transcriptions.create({ model: 'gpt-4o-transcribe', file: await toFile(audio, 'a.wav') }),
    (e) => e.status === 403 && e.code === 'model_not_allowed',
  );
  const forced = pathClient(mint('--model', 'whisper-1'));
  const text = await forced.audio.transcriptions.create({
    model: 'gpt-4o-transcribe',
    file: await toFile(audio, 'a.wav'),
  });
  assert.match(text.text, /model whisper-1,/);
});

test('token as apiKey with the relay base URL', async () => {
  const client = new OpenAI({ baseURL: relayBase(), apiKey: mint(), maxRetries: 0 });
  const resp = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'bearer' }],
  });
  assert.equal(resp.choices[0].message.content, 'mock reply to: bearer');
  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  assert.ok(models.includes(MODEL), models.join(','));
});

test('invalid token → AuthenticationError with code token_invalid', async () => {
  const client = new OpenAI({ baseURL: relayBase(), apiKey: 'not-a-token', maxRetries: 0 });
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }] }),
    (err) => {
      assert.ok(err instanceof OpenAI.AuthenticationError, `got ${err?.constructor?.name}: ${err}`);
      assert.equal(err.status, 401);
      assert.equal(err.code, 'token_invalid');
      return true;
    },
  );
});

test('max_calls=1 → second call is RateLimitError token_exhausted', async () => {
  const client = pathClient(mint('--max-calls', '1'));
  const ask = () =>
    client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'once' }] });
  await ask();
  await assert.rejects(ask(), (err) => {
    assert.ok(err instanceof OpenAI.RateLimitError, `got ${err?.constructor?.name}: ${err}`);
    assert.equal(err.code, 'token_exhausted');
    return true;
  });
});

test('jose decrypts a CLI-minted token with the HKDF content key', async () => {
  const token = mint('--max-calls', '3', '--model', 'gpt-4o');
  const header = Buffer.from(token.split('.')[0], 'base64url').toString('utf8');
  assert.equal(header, `{"alg":"dir","enc":"A256GCM","kid":"${kid}"}`);
  const { plaintext, protectedHeader } = await compactDecrypt(token, contentKey, {
    keyManagementAlgorithms: ['dir'],
    contentEncryptionAlgorithms: ['A256GCM'],
  });
  assert.deepEqual(protectedHeader, { alg: 'dir', enc: 'A256GCM', kid });
  const claims = JSON.parse(new TextDecoder().decode(plaintext));
  assert.equal(claims.provider, 'openai');
  assert.equal(claims.api_key, mockKey);
  assert.equal(claims.max_calls, 3);
  assert.equal(claims.model, 'gpt-4o');
  assert.ok(claims.jti.length >= 22);
  assert.ok(Number.isInteger(claims.iat) && Number.isInteger(claims.exp) && claims.exp > claims.iat);
});

async function joseMint(extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    jti: b64url(randomBytes(16)),
    iat: now,
    exp: now + 600,
    provider: 'openai',
    api_key: mockKey,
    ...extra,
  };
  return new CompactEncrypt(new TextEncoder().encode(JSON.stringify(claims)))
    .setProtectedHeader({ alg: 'dir', enc: 'A256GCM', kid })
    .encrypt(contentKey);
}

test('a token minted by jose CompactEncrypt is accepted by the relay', async () => {
  const token = await joseMint();
  assert.equal(
    Buffer.from(token.split('.')[0], 'base64url').toString('utf8'),
    `{"alg":"dir","enc":"A256GCM","kid":"${kid}"}`,
  );
  const client = pathClient(token);
  const resp = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'minted by jose' }],
  });
  assert.equal(resp.choices[0].message.content, 'mock reply to: minted by jose');
});

test('a jose token with an unknown claim is refused with token_invalid', async () => {
  const client = new OpenAI({ baseURL: relayBase(), apiKey: await joseMint({ admin: true }), maxRetries: 0 });
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }] }),
    (err) => err instanceof OpenAI.AuthenticationError && err.code === 'token_invalid',
  );
});

// The earlier server's JavaScript generator: base64url(IV || AES-256-CBC(JSON)),
// key = the .rai aes_key; its base URL carries the token in the query.
function legacyToken(maxCalls = 10) {
  const now = new Date();
  const json = JSON.stringify({
    id: `token-${now.getTime()}`,
    api_key: mockKey,
    max_calls: maxCalls,
    expire_time: new Date(now.getTime() + 3600_000).toISOString(),
    created_at: now.toISOString(),
    provider: 'openai',
    ext_info: '',
  });
  const iv = randomBytes(16);
  const cipher = createCipheriv('aes-256-cbc', Buffer.from(aesKey, 'hex'), iv);
  return b64url(Buffer.concat([iv, cipher.update(json, 'utf8'), cipher.final()]));
}

test('query-string base URLs (earlier SDKs) work with the current openai SDK', async () => {
  const rai = JSON.parse(readFileSync(raiPath, 'utf8'));
  const c = rai.crypto;
  const raiHash = createHash('sha256').update(c.method + c.aes_key + c.aes_iv_seed).digest('hex');
  const bases = [
    `${relayBase()}?token=${legacyToken()}&rai_hash=${raiHash}`,
    `${relayBase()}?token=${legacyToken()}`,
    `${relayBase()}?token=${mint('--expire', '10m')}`,
  ];
  for (const baseURL of bases) {
    const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });
    const reply = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'legacy base url' }],
    });
    assert.equal(reply.choices[0].message.content, 'mock reply to: legacy base url', baseURL);
    const models = await client.models.list();
    assert.ok(models.data.length > 0, baseURL);
  }
});
