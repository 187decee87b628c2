// RelayAPIClient and TokenGenerator without a server: .rai validation, URL
// shapes, argument errors, HTTP error mapping (stubbed fetch), fromFile.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  RelayAPIClient,
  TokenGenerator,
  RelayAPIError,
  ConfigError,
  InvalidArgumentError,
  TokenError,
  APIError,
  APIConnectionError,
} from 'relayapi-sdk';

const KEY = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
const rai = (over = {}) => ({
  version: '1.0.0',
  server: { host: 'http://localhost', port: 8840, base_path: '/relayapi/', ...over.server },
  crypto: { method: 'aes', aes_key: KEY, aes_iv_seed: '00ff', ...over.crypto },
  ...over.root,
});

test('base URL: port added, trailing slash removed, base_path normalised, explicit port kept', () => {
  const cases = [
    [{}, 'http://localhost:8840/relayapi/'],
    [{ server: { host: 'http://localhost/', base_path: 'relayapi' } }, 'http://localhost:8840/relayapi/'],
    [{ server: { base_path: '' } }, 'http://localhost:8840/'],
    [{ server: { base_path: '//a/b//' } }, 'http://localhost:8840/a/b/'],
    [{ server: { host: 'https://relay.example.com:9443' } }, 'https://relay.example.com:9443/relayapi/'],
    [{ server: { host: 'http://[::1]' } }, 'http://[::1]:8840/relayapi/'],
    [{ server: { host: 'http://[::1]:9000' } }, 'http://[::1]:9000/relayapi/'],
  ];
  for (const [over, want] of cases) assert.equal(new RelayAPIClient(rai(over)).baseUrl, want);
  assert.deepEqual(new RelayAPIClient(rai({ server: { base_path: 'x' } })).server, {
    host: 'http://localhost',
    port: 8840,
    base_path: '/x/',
  });
});

test('generateApiUrlWithToken maps every apiType and refuses unknown ones', () => {
  const c = new RelayAPIClient(rai());
  const t = 'eyJabc..def.ghi.jkl';
  assert.equal(c.generateApiUrlWithToken(t), `http://localhost:8840/relayapi/${t}/`);
  assert.equal(c.generateApiUrlWithToken(t, ''), `http://localhost:8840/relayapi/${t}/`);
  assert.equal(c.generateApiUrlWithToken(t, 'chat_completions'), `http://localhost:8840/relayapi/${t}/chat/completions`);
  assert.equal(c.generateApiUrlWithToken(t, 'images_generations'), `http://localhost:8840/relayapi/${t}/images/generations`);
  assert.equal(c.generateApiUrlWithToken(t, 'embeddings'), `http://localhost:8840/relayapi/${t}/embeddings`);
  assert.throws(() => c.generateApiUrlWithToken(t, 'completions'), (e) => e instanceof InvalidArgumentError && e.argument === 'apiType');
  assert.throws(() => c.generateApiUrlWithToken(''), InvalidArgumentError);
});

test('generateUrl embeds a token that decodes to the requested claims', async () => {
  const c = new RelayAPIClient(rai());
  const url = await c.generateUrl({ apiKey: 'sk-1', provider: 'anthropic', expireSeconds: 60, maxCalls: 2, models: ['a', 'b'], sub: 'u', extInfo: 'e' });
  const token = url.slice(c.baseUrl.length, -1);
  const before = Math.floor(Date.now() / 1000);
  const { claims } = await c.tokenGenerator.decryptToken(token);
  assert.deepEqual(Object.keys(claims), ['jti', 'iat', 'exp', 'provider', 'api_key', 'max_calls', 'models', 'sub', 'ext_info']);
  assert.ok(Math.abs(claims.iat - before) <= 2);
  assert.equal(claims.exp - claims.iat, 60);
  assert.equal(claims.jti.length, 22);
  assert.deepEqual([claims.provider, claims.api_key, claims.max_calls, claims.models, claims.sub, claims.ext_info], ['anthropic', 'sk-1', 2, ['a', 'b'], 'u', 'e']);
  const other = await c.createToken({ apiKey: 'sk-1' });
  assert.notEqual(other.split('.')[2], token.split('.')[2], 'fresh IV per token');
});

test('createToken defaults: provider openai, 1 hour, optional claims omitted; null means absent', async () => {
  const gen = new TokenGenerator(KEY, { now: () => 1000 });
  const claims = gen.buildClaims({ apiKey: 'k', maxCalls: null, model: null, models: null, sub: null, extInfo: null });
  assert.deepEqual(Object.keys(claims), ['jti', 'iat', 'exp', 'provider', 'api_key']);
  assert.equal(claims.exp, 4600);
  assert.equal(claims.provider, 'openai');
  // provider / expireSeconds: null is their default too (as None is in Python).
  const nulls = gen.buildClaims({ apiKey: 'k', provider: null, expireSeconds: null });
  assert.deepEqual([nulls.provider, nulls.exp - nulls.iat], ['openai', 3600]);
  assert.equal(gen.buildClaims({ apiKey: 'k', extInfo: { rep_m: 'm' } }).ext_info, '{"rep_m":"m"}');
});

test('extInfo objects are written like the Python SDK: keys sorted recursively, Python number forms', () => {
  const gen = new TokenGenerator(KEY, { now: () => 1000 });
  const ext = {
    z: 1,
    'é': 'é\u2028\u2029',
    b: { y: [1, 2.5, 1e-7, 0.00001, 1e21, -0.0001234, 1e16, null, true], a: null, c: 'tab\t\u0001\u001f\u007f</script>"\\' },
    A: {},
    10: 'x',
    2: 'y',
    '\u{1f680}': 'rocket',
    '\uffff': 'max',
    big: 12345678901234567890123n,
    gone: undefined,
  };
  // Python: json.dumps(<the same dict>, ensure_ascii=False, separators=(",", ":")), keys sorted.
  const python =
    '{"10":"x","2":"y","A":{},"b":{"a":null,"c":"tab\\t\\u0001\\u001f\u007f</script>\\"\\\\",' +
    '"y":[1,2.5,1e-07,1e-05,1e+21,-0.0001234,10000000000000000,null,true]},"big":12345678901234567890123,' +
    '"z":1,"\u00e9":"\u00e9\u2028\u2029","\uffff":"max","\u{1f680}":"rocket"}';
  assert.equal(gen.buildClaims({ apiKey: 'k', extInfo: ext }).ext_info, python);
  assert.equal(gen.buildClaims({ apiKey: 'k', extInfo: { b: 1, a: { d: 1, c: 2 } } }).ext_info, '{"a":{"c":2,"d":1},"b":1}');
  for (const bad of [{ a: 1n, f() {} }, { a: NaN }, { a: [undefined] }, { a: new Date(0) }, { a: '\ud800' }]) {
    assert.throws(() => gen.buildClaims({ apiKey: 'k', extInfo: bad }), (e) => {
      assert.ok(e instanceof InvalidArgumentError, String(e));
      assert.equal(e.argument, 'extInfo');
      return true;
    });
  }
});

test('encryptToken: a claim set to undefined is absent, and so is a named claim set to null', async () => {
  const gen = new TokenGenerator(KEY);
  const base = { jti: 'x'.repeat(22), iat: 1, exp: 2, provider: 'p', api_key: 'k' };
  const iv = new Uint8Array(12);
  const plain = await gen._mintWith({ claims: base, iv });
  for (const extra of [{ sub: undefined }, { model: null }, { key_ref: null, origins: null, rps: undefined }, { x_gone: undefined }]) {
    assert.equal(await gen._mintWith({ claims: { ...base, ...extra }, iv }), plain, JSON.stringify(Object.keys(extra)));
  }
  await gen.encryptToken({ ...base, sub: undefined, model: null });
  // An x_ claim may be JSON null; a required claim set to null is still missing.
  const { claims } = await gen.decryptToken(await gen.encryptToken({ ...base, x_n: null }), { now: 1 });
  assert.equal(claims.x_n, null);
  await assert.rejects(gen.encryptToken({ ...base, provider: null }), (e) => e instanceof InvalidArgumentError && e.argument === 'provider');
  await assert.rejects(gen.encryptToken({ ...base, sub: 5 }), (e) => e instanceof InvalidArgumentError && e.argument === 'sub');
});

test('x_ claims: integers outside the relay range -2^63 … 2^64-1 are refused, naming the claim', async () => {
  const gen = new TokenGenerator(KEY);
  const base = { jti: 'x'.repeat(22), iat: 1, exp: 2, provider: 'p', api_key: 'k' };
  for (const ok of [2n ** 64n - 1n, -(2n ** 63n), { a: [2n ** 63n] }]) await gen.encryptToken({ ...base, x_n: ok });
  // Integral numbers are integers too (the Python SDK refuses the same int values).
  for (const ok of [-(2 ** 63), 2 ** 64 - 2048, { a: [2 ** 63, 1.5] }]) await gen.encryptToken({ ...base, x_n: ok });
  for (const bad of [2n ** 64n, -(2n ** 63n) - 1n, 10n ** 400n, { a: [1, { b: 2n ** 64n }] }, 2 ** 64, -(2 ** 64), 1e300, [{ a: 2 ** 70 }]]) {
    await assert.rejects(gen.encryptToken({ ...base, x_n: bad }), (e) => {
      assert.ok(e instanceof InvalidArgumentError, String(e));
      assert.equal(e.argument, 'x_n');
      assert.match(e.message, /2\^64/);
      return true;
    });
  }
  // ext_info is opaque text to the relay: a big integer there is fine, as in Python.
  assert.equal(gen.buildClaims({ apiKey: 'k', extInfo: { n: 10n ** 30n } }).ext_info, `{"n":${10n ** 30n}}`);
});

test('invalid arguments throw InvalidArgumentError naming the argument', async () => {
  const c = new RelayAPIClient(rai());
  const bad = [
    [{}, 'apiKey'],
    [{ apiKey: '' }, 'apiKey'],
    [{ apiKey: 'k', provider: '' }, 'provider'],
    [{ apiKey: 'k', maxCalls: 0 }, 'maxCalls'],
    [{ apiKey: 'k', maxCalls: -1 }, 'maxCalls'],
    [{ apiKey: 'k', maxCalls: 1.5 }, 'maxCalls'],
    [{ apiKey: 'k', expireSeconds: 0 }, 'expireSeconds'],
    [{ apiKey: 'k', expireSeconds: -60 }, 'expireSeconds'],
    [{ apiKey: 'k', expireSeconds: 1.5 }, 'expireSeconds'],
    [{ apiKey: 'k', models: [] }, 'models'],
    [{ apiKey: 'k', models: ['a', ''] }, 'models'],
    [{ apiKey: 'k', models: 'gpt-4o' }, 'models'],
    [{ apiKey: 'k', model: '' }, 'model'],
    [{ apiKey: 'k', sub: 5 }, 'sub'],
    [{ apiKey: 'k', extInfo: 5 }, 'extInfo'],
  ];
  for (const [opts, arg] of bad) {
    await assert.rejects(c.createToken(opts), (e) => {
      assert.ok(e instanceof InvalidArgumentError && e instanceof RelayAPIError, String(e));
      assert.equal(e.code, 'invalid_argument');
      assert.equal(e.argument, arg, JSON.stringify(opts));
      return true;
    });
  }
  const gen = new TokenGenerator(KEY);
  await assert.rejects(gen.encryptToken({ jti: 'x'.repeat(22), iat: 1, exp: 2, provider: 'p', api_key: 'k', extra: 1 }), (e) => e.argument === 'extra');
  await assert.rejects(gen.encryptToken({ jti: 'short', iat: 1, exp: 2, provider: 'p', api_key: 'k' }), (e) => e.argument === 'jti');
  await assert.rejects(gen.encryptToken({ jti: 'x'.repeat(22), iat: 2, exp: 2, provider: 'p', api_key: 'k' }), (e) => e.argument === 'exp');
  await assert.rejects(gen.encryptToken({ jti: 'x'.repeat(22), iat: 1, exp: 2, provider: 'p', api_key: 'k', x_big: 'a'.repeat(20000) }), (e) => e.argument === 'claims');
});

test('.rai validation reports every problem, names fields and fixes, never echoes the key', () => {
  const secretKey = 'ab'.repeat(31) + 'zz';
  assert.throws(
    () => new RelayAPIClient(rai({ server: { port: 0 }, crypto: { method: 'des', aes_key: secretKey, aes_iv_seed: 'abc' } })),
    (e) => {
      assert.ok(e instanceof ConfigError);
      assert.equal(e.code, 'config_invalid');
      assert.deepEqual(e.problems.map((p) => p.field), ['server.port', 'crypto.method', 'crypto.aes_key', 'crypto.aes_iv_seed']);
      assert.ok(!e.message.includes(secretKey) && !e.message.includes('abc'), e.message);
      assert.match(e.message, /relayapi gen-config/);
      return true;
    },
  );
  assert.throws(() => new RelayAPIClient({}), (e) => e.problems.map((p) => p.field).join() === 'version,server,crypto');
  assert.throws(() => new RelayAPIClient(null), ConfigError);
  assert.throws(() => new RelayAPIClient('default.rai'), /fromFile/);
  assert.throws(() => new RelayAPIClient(rai({ server: { base_path: undefined } })), /server\.base_path is missing/);
  assert.doesNotThrow(() => new RelayAPIClient(rai({ crypto: { method: 'AES', aes_key: KEY.toUpperCase() }, root: { future: 1 } })));
});

test('fromFile / fromJSON: missing file, bad JSON (not echoed), valid file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'relayapi-sdk-unit-'));
  try {
    await assert.rejects(RelayAPIClient.fromFile(join(dir, 'nope.rai')), (e) => e instanceof ConfigError && /not found.*gen-config/.test(e.message));
    writeFileSync(join(dir, 'bad.rai'), `{"crypto": {"aes_key": "${KEY}"`);
    await assert.rejects(RelayAPIClient.fromFile(join(dir, 'bad.rai')), (e) => {
      assert.ok(e instanceof ConfigError && /not valid JSON/.test(e.message));
      assert.ok(!e.message.includes(KEY) && !String(e.cause ?? '').includes(KEY));
      return true;
    });
    writeFileSync(join(dir, 'ok.rai'), JSON.stringify(rai()));
    const c = await RelayAPIClient.fromFile(join(dir, 'ok.rai'));
    assert.equal(c.baseUrl, 'http://localhost:8840/relayapi/');
    assert.equal(RelayAPIClient.fromJSON(JSON.stringify(rai())).baseUrl, c.baseUrl);
    assert.throws(() => RelayAPIClient.fromJSON('{'), ConfigError);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the client never shows key material when logged', async () => {
  const { inspect } = await import('node:util');
  const c = new RelayAPIClient(rai());
  assert.ok(!inspect(c, { depth: 5, showHidden: true }).includes(KEY));
  assert.ok(!JSON.stringify(c).includes(KEY));
});

test('HTTP: relay error bodies become APIError with status, code, requestId', async () => {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    return new Response(JSON.stringify({ error: { message: 'expired', type: 'authentication_error', code: 'token_expired' } }), {
      status: 401,
      headers: { 'content-type': 'application/json', 'x-request-id': 'req-123' },
    });
  };
  const c = new RelayAPIClient(rai(), { fetch });
  await assert.rejects(c.chatCompletions('tok', [{ role: 'user', content: 'hi' }], 'gpt-4o-mini', { temperature: 0 }), (e) => {
    assert.ok(e instanceof APIError && e instanceof RelayAPIError);
    assert.equal(e.status, 401);
    assert.equal(e.code, 'token_expired');
    assert.equal(e.type, 'authentication_error');
    assert.equal(e.requestId, 'req-123');
    assert.ok(!e.message.includes('tok/'), 'no URL/token in message');
    return true;
  });
  assert.equal(calls[0].url, 'http://localhost:8840/relayapi/tok/chat/completions');
  assert.equal(calls[0].init.method, 'POST');
  assert.deepEqual(JSON.parse(calls[0].init.body), { temperature: 0, model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] });

  const plain = new RelayAPIClient(rai(), { fetch: async () => new Response('upstream exploded', { status: 502 }) });
  await assert.rejects(plain.embeddings('tok', 'x', 'm'), (e) => e.code === 'http_502' && e.status === 502 && e.requestId === undefined);

  const down = new RelayAPIClient(rai(), { fetch: async () => { throw new TypeError('fetch failed'); } });
  await assert.rejects(down.healthCheck(), (e) => e instanceof APIConnectionError && e.code === 'connection_error');

  const slow = new RelayAPIClient(rai(), {
    timeoutMs: 20,
    fetch: (_u, init) => new Promise((_r, reject) => init.signal.addEventListener('abort', () => reject(new Error('aborted')))),
  });
  await assert.rejects(slow.imagesGenerations('tok', 'a cat'), (e) => e.code === 'timeout');

  const ok = new RelayAPIClient(rai(), { fetch: async (url) => new Response(JSON.stringify({ url }), { status: 200 }) });
  assert.deepEqual(await ok.healthCheck(), { url: 'http://localhost:8840/health' });
});

test('TokenError codes and TokenGenerator key validation', async () => {
  assert.throws(() => new TokenGenerator('00'), (e) => e instanceof InvalidArgumentError && !e.message.includes('00'.repeat(2)));
  const gen = new TokenGenerator(KEY, { now: () => 100 });
  const t = await gen.createToken({ apiKey: 'k', expireSeconds: 10 });
  await assert.rejects(gen.decryptToken(t, { now: 110 }), (e) => e instanceof TokenError && e.code === 'token_expired');
  await assert.rejects(gen.decryptToken(t, { now: 39 }), (e) => e.code === 'token_not_yet_valid');
  assert.equal((await gen.decryptToken(t, { now: 40 })).claims.api_key, 'k');
  await assert.rejects(new TokenGenerator('ff'.repeat(32)).decryptToken(t, { now: 100 }), (e) => e.code === 'token_invalid');
});

test('an unknown or snake_case option is refused, never minted without its limit', async () => {
  const gen = new TokenGenerator(KEY);
  for (const [options, named, hint] of [
    [{ apiKey: 'sk-x', max_calls: 1 }, 'max_calls', 'maxCalls'],
    [{ apiKey: 'sk-x', expire_seconds: 60 }, 'expire_seconds', 'expireSeconds'],
    [{ apiKey: 'sk-x', expireDays: 2 }, 'expireDays', null],
  ]) {
    await assert.rejects(gen.createToken(options), (e) => {
      assert.ok(e instanceof InvalidArgumentError, String(e));
      assert.equal(e.argument, named);
      if (hint) assert.match(e.message, new RegExp(`did you mean ${hint}`));
      assert.ok(!e.message.includes('sk-x'));
      return true;
    });
  }
  // Every documented option is accepted.
  await gen.createToken({
    apiKey: 'sk-x', provider: 'openai', expireSeconds: 60, maxCalls: 1, model: null, models: ['m'],
    sub: 's', extInfo: 'e', origins: ['https://a.example'], ips: ['10.0.0.0/8'], paths: ['chat/completions'],
    methods: ['POST'], rps: 1, burst: 2, concurrency: 1, maxTokens: 10, maxBodyBytes: 100,
  });
});

test('an apiKey with a control character (a key read with its newline) is refused, at mint and decode', async () => {
  const gen = new TokenGenerator(KEY);
  const base = { jti: 'x'.repeat(22), iat: 1, exp: 2, provider: 'p' };
  for (const key of ['sk-mock\n', 'sk-mock\r\n', 'sk\u0000x', '\tsk', 'sk\u007f', 'sk\u001f']) {
    await assert.rejects(gen.createToken({ apiKey: key }), (e) => {
      assert.ok(e instanceof InvalidArgumentError, String(e));
      assert.equal(e.argument, 'apiKey');
      assert.ok(e.message.startsWith('apiKey ') && /trailing newline/.test(e.message), e.message);
      return true;
    });
    await assert.rejects(gen.encryptToken({ ...base, api_key: key }), (e) => e.argument === 'api_key' && /trailing newline/.test(e.message));
  }
  const { claims } = await gen.decryptToken(await gen.createToken({ apiKey: 'sk-é 1' }));
  assert.equal(claims.api_key, 'sk-é 1');
});

test('.rai server.host follows the relay check_host: http(s)://host[:port][/] only', () => {
  const good = ['http://localhost', 'https://relay.example.com', 'HTTPS://relay.example.com/', 'http://localhost:9000', 'http://[::1]:8840', 'Http://127.0.0.1'];
  for (const host of good) assert.equal(new RelayAPIClient(rai({ server: { host } })).server.host, host);
  const bad = {
    '': 'must start with http:// or https://',
    localhost: 'must start with http:// or https://',
    'relay.example.com:443': 'must start with http:// or https://',
    'ftp://a.example': 'must start with http:// or https://',
    ' http://127.0.0.1': 'must start with http:// or https://',
    'http://': 'must name a host after the scheme',
    'https:///': 'must name a host after the scheme',
    'http://a.example/x': 'must be a scheme and a host only',
    'http://127.0.0.1/relay': 'must be a scheme and a host only',
    'http://a.example//': 'must be a scheme and a host only',
    'http://a.example?x=1': 'must be a scheme and a host only',
    'http://a.example#f': 'must be a scheme and a host only',
    'http://u@a.example': 'must be a scheme and a host only',
    'http://a .example': 'must be a scheme and a host only',
    'http://a.example\n': 'must be a scheme and a host only',
    'http://a\\b': 'must be a scheme and a host only',
    'http://a\u007f': 'must be a scheme and a host only',
  };
  for (const [host, problem] of Object.entries(bad)) {
    assert.throws(() => new RelayAPIClient(rai({ server: { host } })), (e) => {
      assert.ok(e instanceof ConfigError, String(e));
      assert.deepEqual(e.problems.map((p) => p.field), ['server.host'], host);
      assert.ok(e.problems[0].problem.startsWith(problem), `${JSON.stringify(host)}: ${e.problems[0].problem}`);
      return true;
    });
  }
});

test('.rai bytes are read as the relay reads them: strict UTF-8, no byte order mark', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'relayapi-sdk-unit-'));
  try {
    const text = Buffer.from(JSON.stringify(rai()));
    writeFileSync(join(dir, 'bom.rai'), Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), text]));
    await assert.rejects(RelayAPIClient.fromFile(join(dir, 'bom.rai')), (e) => {
      assert.ok(e instanceof ConfigError && /byte order mark/.test(e.message), String(e));
      assert.ok(!e.message.includes(KEY));
      return true;
    });
    assert.throws(() => RelayAPIClient.fromJSON('\ufeff' + text.toString()), /byte order mark/);
    writeFileSync(join(dir, 'latin1.rai'), Buffer.from(text.toString().replace('"1.0.0"', '"1.0.\u00e9"'), 'latin1'));
    await assert.rejects(RelayAPIClient.fromFile(join(dir, 'latin1.rai')), (e) => e instanceof ConfigError && /not UTF-8/.test(e.message));
    writeFileSync(join(dir, 'ok.rai'), text.toString().replace('"1.0.0"', '"1.0.\u00e9"'));
    await RelayAPIClient.fromFile(join(dir, 'ok.rai'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('timeoutMs above 2^31 - 1 or not finite is refused (timers would clamp it to 1 ms)', async () => {
  for (const timeoutMs of [2 ** 31, Infinity, NaN, 0, -1, 1e300, '1000']) {
    assert.throws(() => new RelayAPIClient(rai(), { timeoutMs }), (e) => {
      assert.ok(e instanceof InvalidArgumentError, String(e));
      assert.equal(e.argument, 'timeoutMs');
      assert.match(e.message, /2147483647/);
      return true;
    });
  }
  const ok = async (input, init) => new Response('{"status":"ok"}', { status: 200 });
  for (const timeoutMs of [1, 2 ** 31 - 1, 1.5]) {
    assert.deepEqual(await new RelayAPIClient(rai(), { timeoutMs, fetch: ok }).healthCheck(), { status: 'ok' });
  }
});

test('argument errors name the option and the real problem (too large, not "must be >= 1"; expireSeconds, not exp)', async () => {
  const gen = new TokenGenerator(KEY, { now: () => 1000 });
  const cases = [
    [{ apiKey: 'k', expireSeconds: 2 ** 53 - 1 }, 'expireSeconds', /too large/],
    [{ apiKey: 'k', maxCalls: 2 ** 64 }, 'maxCalls', /at most 9007199254740991/],
    [{ apiKey: 'k', maxCalls: 2 ** 53 }, 'maxCalls', /at most 9007199254740991/],
  ];
  for (const [opts, arg, words] of cases) {
    assert.throws(() => gen.buildClaims(opts), (e) => {
      assert.ok(e instanceof InvalidArgumentError, String(e));
      assert.equal(e.argument, arg, JSON.stringify(opts));
      assert.match(e.message, words);
      return true;
    });
  }
  assert.equal(gen.buildClaims({ apiKey: 'k', expireSeconds: 2 ** 53 - 1 - 1000 }).exp, 2 ** 53 - 1);
  await assert.rejects(gen.createToken({ apiKey: 'k', sub: '\ud800' }), (e) => e.argument === 'sub' && /surrogate/.test(e.message));
  const base = { jti: 'x'.repeat(22), iat: 1, exp: 2, provider: 'p', api_key: 'k' };
  await assert.rejects(gen.encryptToken({ ...base, max_calls: 2 ** 64 }), (e) => e.argument === 'max_calls' && /at most/.test(e.message));
});

test('stream: true is refused by the helpers (as stream=True is in Python), before any request', async () => {
  let calls = 0;
  const c = new RelayAPIClient(rai(), { fetch: async () => (calls++, new Response('{}')) });
  const token = await c.createToken({ apiKey: 'k' });
  for (const call of [
    () => c.chatCompletions(token, [{ role: 'user', content: 'hi' }], 'm', { stream: true }),
    () => c.imagesGenerations(token, 'a cat', { stream: true }),
    () => c.embeddings(token, 'x', 'm', { stream: true }),
  ]) {
    await assert.rejects(call(), (e) => e instanceof InvalidArgumentError && e.argument === 'stream' && /generateUrl/.test(e.message));
  }
  assert.equal(calls, 0);
  await c.chatCompletions(token, [{ role: 'user', content: 'hi' }], 'm', { stream: false });
  assert.equal(calls, 1);
});
