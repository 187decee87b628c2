// The policy options of createToken (docs/token-format.md §4.1): keyRef,
// origins, ips, paths, methods, rps/burst, concurrency, maxTokens,
// maxBodyBytes — the grammar corpus shared with the Python SDK (and checked
// against the relay binary by the Python e2e suite), the messages that say
// what to fix, and canonical serialisation. No relay here: e2e.test.mjs
// sends such tokens to the real one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TokenGenerator, RelayAPIClient, InvalidArgumentError, canonicalClaimsJson, deriveContentKey } from 'relayapi-sdk';
import { REPO } from './harness.mjs';

const KEY = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
const CORPUS = JSON.parse(readFileSync(join(REPO, 'sdk', 'testdata', 'policy-claims.json'), 'utf8'));
const LISTS = ['origins', 'ips', 'paths', 'methods'];
const BASE = { jti: 'A'.repeat(22), iat: 1, exp: 2, provider: 'openai', api_key: 'sk' };
const gen = new TokenGenerator(KEY);

async function claimsOf(token) {
  return (await gen.decryptToken(token)).claims;
}

async function refusal(promise) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof InvalidArgumentError, String(e));
    assert.equal(e.code, 'invalid_argument');
    return e;
  }
  assert.fail('expected an InvalidArgumentError');
}

// ---- the shared corpus -------------------------------------------------------

test('the corpus covers every list claim', () => {
  for (const claim of LISTS) {
    assert.ok(CORPUS[claim].valid.length >= 9 && CORPUS[claim].invalid.length >= 10, claim);
  }
});

// Valid to the relay, but an IPv4-mapped ips item matches no client (the relay
// matches IPv4 clients as IPv4), so the SDKs refuse to mint it.
const neverMatches = (claim, item) => claim === 'ips' && item.toLowerCase().startsWith('::ffff:') && item.includes('.');

for (const claim of LISTS) {
  test(`corpus: every valid ${claim} item is minted, in the order given`, async () => {
    const items = CORPUS[claim].valid.filter((item) => !neverMatches(claim, item));
    for (const item of items) {
      assert.deepEqual((await claimsOf(await gen.createToken({ apiKey: 'sk', [claim]: [item] })))[claim], [item]);
    }
    assert.deepEqual((await claimsOf(await gen.createToken({ apiKey: 'sk', [claim]: items })))[claim], items);
    const reversed = [...items].reverse();
    assert.deepEqual((await claimsOf(await gen.createToken({ apiKey: 'sk', [claim]: reversed })))[claim], reversed);
  });

  test(`corpus: every invalid ${claim} item is refused`, async () => {
    for (const item of CORPUS[claim].invalid) {
      const e = await refusal(gen.createToken({ apiKey: 'sk', [claim]: [item] }));
      assert.equal(e.argument, claim, item);
      assert.ok(e.message.startsWith(`${claim}[0] `), e.message);
      // The same claim in a raw claims set (encryptToken, and the decoder).
      assert.equal((await refusal(gen.encryptToken({ ...BASE, [claim]: [item] }))).argument, claim, item);
    }
  });
}

// ---- messages that say what to fix --------------------------------------------

const MESSAGES = [
  [{ methods: ['post'] }, 'methods', 'methods[0] "post" is invalid: methods are upper-case: write "POST"'],
  [{ methods: ['POST', 'GET', 'POST'] }, 'methods', 'methods[2] "POST" repeats methods[0]'],
  [{ methods: ['M-SEARCH'] }, 'methods', 'upper-case letters only'],
  [{ ips: ['10.0.0.1/8'] }, 'ips', 'write the network address "10.0.0.0/8" (or the bare address "10.0.0.1"'],
  [{ ips: ['192.168.1.77/24'] }, 'ips', '"192.168.1.0/24"'],
  [{ ips: ['2001:db8::1/32'] }, 'ips', '"2001:db8::/32"'],
  [{ ips: ['1:0:0:1:0:0:0:1/112'] }, 'ips', '"1:0:0:1::/112"'],
  [{ ips: ['2001:db8:0:0:1:0:0:1/120'] }, 'ips', '"2001:db8:0:0:1::/120"'],
  [{ ips: ['fe80::1/10'] }, 'ips', '"fe80::/10"'],
  [{ ips: ['::1/0'] }, 'ips', '"::/0"'],
  [{ ips: ['10.0.0.0/33'] }, 'ips', 'prefix /33 is too long for IPv4 (0-32)'],
  [{ ips: ['::/129'] }, 'ips', 'prefix /129 is too long for IPv6 (0-128)'],
  [{ ips: ['10.0.0.0/08'] }, 'ips', 'without leading zeros'],
  [{ ips: ['010.0.0.1'] }, 'ips', 'octets are written without leading zeros'],
  [{ ips: ['localhost'] }, 'ips', 'host names are not allowed'],
  [{ ips: ['fe80::1%eth0'] }, 'ips', 'zone ids'],
  [{ ips: ['[::1]'] }, 'ips', 'without brackets'],
  [{ ips: '10.0.0.0/8' }, 'ips', 'ips must be an array of strings'],
  [{ ips: new Set(['10.0.0.0/8']) }, 'ips', 'not a Set'],
  [{ origins: ['https://app.example.com/'] }, 'origins', 'write "https://app.example.com"'],
  [{ origins: ['https://app.example.com:8443/x?y'] }, 'origins', 'write "https://app.example.com:8443"'],
  [{ origins: ['app.example.com'] }, 'origins', 'needs its scheme: write e.g. "https://app.example.com"'],
  [{ origins: ['*'] }, 'origins', 'leave origins out to allow any origin'],
  [{ origins: ['https://a.*.example.com'] }, 'origins', 'only allowed as the first label'],
  [{ origins: ['https://example.com:080'] }, 'origins', 'port "080" must be a number 1-65535'],
  [{ origins: ['https://bücher.example'] }, 'origins', 'punycode'],
  [{ origins: [] }, 'origins', 'origins must not be empty: leave it out'],
  [{ origins: [''] }, 'origins', 'origins[0] must be a non-empty string'],
  [{ origins: ['https://a.example', 1] }, 'origins', 'origins[1] must be a non-empty string (got number 1)'],
  [{ origins: ['https://a.example\ud800'] }, 'origins', 'origins[0] must be a non-empty string'],
  [{ paths: ['/chat/completions'] }, 'paths', 'write "chat/completions" (no leading \'/\')'],
  [{ paths: ['chat/completions/'] }, 'paths', 'write "chat/completions" (no trailing \'/\''],
  [{ paths: ['chat/%2e%2e'] }, 'paths', 'percent-encoding is not allowed'],
  [{ paths: ['chat/../admin'] }, 'paths', "'.' and '..' segments are not allowed"],
  [{ rps: 0 }, 'rps', 'rps must be an integer >= 1 (got number 0)'],
  [{ rps: true }, 'rps', '(got boolean true)'],
  [{ rps: 2.5 }, 'rps', '(got number 2.5)'],
  [{ rps: '5' }, 'rps', '(got string "5")'],
  [{ rps: 2 ** 53 }, 'rps', 'safe integer'],
  [{ rps: 2, burst: 0 }, 'burst', 'burst must be an integer >= 1'],
  [{ burst: 5 }, 'burst', 'burst only shapes the rps limit: set rps too'],
  [{ concurrency: -1 }, 'concurrency', 'concurrency must be an integer >= 1'],
  [{ maxTokens: '1000' }, 'maxTokens', 'maxTokens must be an integer >= 1 (got string "1000")'],
  [{ maxBodyBytes: 0 }, 'maxBodyBytes', 'maxBodyBytes must be an integer >= 1'],
  [{ keyRef: 'team' }, 'keyRef', 'not both'],
];

test('invalid options say what to fix, naming the option (and never the key)', async () => {
  const client = new RelayAPIClient({
    version: '1.0.0',
    server: { host: 'http://localhost', port: 8840, base_path: '/relayapi/' },
    crypto: { method: 'aes', aes_key: KEY, aes_iv_seed: '00' },
  });
  for (const [options, argument, fragment] of MESSAGES) {
    for (const mint of [(o) => client.createToken(o), (o) => client.generateUrl(o), (o) => gen.createToken(o)]) {
      const e = await refusal(mint({ apiKey: 'sk-secret-value', ...options }));
      assert.equal(e.argument, argument, JSON.stringify(options));
      assert.ok(e.message.includes(fragment), `${e.message}\n  wanted: ${fragment}`);
      assert.ok(!e.message.includes('sk-secret-value'));
    }
  }
});

test('exactly one of apiKey and keyRef', async () => {
  for (const options of [{}, { apiKey: null, keyRef: null }, { apiKey: '' }]) {
    const e = await refusal(gen.createToken(options));
    assert.equal(e.argument, 'apiKey');
    assert.match(e.message, /or pass keyRef/);
  }
  for (const keyRef of ['', 5, ['team']]) {
    assert.equal((await refusal(gen.createToken({ keyRef }))).argument, 'keyRef');
  }
  const both = await refusal(gen.encryptToken({ ...BASE, key_ref: 'team' }));
  assert.equal(both.argument, 'key_ref');
  assert.match(both.message, /exactly one of the claims api_key .* and key_ref .*; got api_key and key_ref/);
  const neither = await refusal(gen.encryptToken({ jti: BASE.jti, iat: 1, exp: 2, provider: 'openai' }));
  assert.match(neither.message, /got neither/);
});

test('a keyRef token carries no provider key', async () => {
  const claims = await claimsOf(await gen.createToken({ keyRef: 'team-openai', maxTokens: 1000 }));
  assert.equal(claims.key_ref, 'team-openai');
  assert.deepEqual(Object.keys(claims), ['jti', 'iat', 'exp', 'provider', 'key_ref', 'max_tokens']);
});

// ---- canonical serialisation ----------------------------------------------------

test('every option, in canonical order, byte for byte', () => {
  const claims = new TokenGenerator(KEY, { now: () => 1_700_000_000, randomBytes: (n) => new Uint8Array(n) }).buildClaims({
    maxBodyBytes: 65536,
    maxTokens: 1000,
    concurrency: 3,
    burst: 20,
    rps: 5,
    methods: ['POST', 'GET'],
    paths: ['v1/messages', 'v1/models'],
    ips: ['2001:db8::/32', '192.0.2.0/24'],
    origins: ['https://b.example', '*.a.example'],
    keyRef: 'anthropic-pool',
    extInfo: { app: 'demo' },
    sub: 'user-42',
    models: ['claude-3-5-haiku-latest'],
    model: 'claude-3-5-haiku-latest',
    maxCalls: 100,
    expireSeconds: 600,
    provider: 'anthropic',
  });
  assert.equal(
    canonicalClaimsJson(claims),
    '{"jti":"AAAAAAAAAAAAAAAAAAAAAA","iat":1700000000,"exp":1700000600,"provider":"anthropic",' +
      '"key_ref":"anthropic-pool","max_calls":100,"model":"claude-3-5-haiku-latest",' +
      '"models":["claude-3-5-haiku-latest"],"sub":"user-42","ext_info":"{\\"app\\":\\"demo\\"}",' +
      '"origins":["https://b.example","*.a.example"],"ips":["2001:db8::/32","192.0.2.0/24"],' +
      '"paths":["v1/messages","v1/models"],"methods":["POST","GET"],"rps":5,"burst":20,' +
      '"concurrency":3,"max_tokens":1000,"max_body_bytes":65536}',
  );
});

test('null and undefined mean absent; arrays are copied', () => {
  const fixed = () => new TokenGenerator(KEY, { now: () => 1000, randomBytes: (n) => new Uint8Array(n) });
  const none = Object.fromEntries(
    ['keyRef', ...LISTS, 'rps', 'burst', 'concurrency', 'maxTokens', 'maxBodyBytes'].map((k) => [k, null]),
  );
  assert.deepEqual(fixed().buildClaims({ apiKey: 'k', ...none }), fixed().buildClaims({ apiKey: 'k' }));
  const paths = ['chat/completions'];
  const claims = fixed().buildClaims({ apiKey: 'k', paths });
  paths.push('embeddings');
  assert.deepEqual(claims.paths, ['chat/completions']);
});

test('ips: IPv4-mapped items are refused when minting, with the IPv4 form; the decoder accepts them as the relay does', async () => {
  assert.ok(CORPUS.ips.valid.some((item) => neverMatches('ips', item)));
  const cases = [
    ['::ffff:1.2.3.4', '"1.2.3.4"'],
    ['::FFFF:192.0.2.1', '"192.0.2.1"'],
    ['::ffff:10.0.0.0/104', '"10.0.0.0/8"'],
    ['::ffff:0:0/96', '"0.0.0.0/0"'],
    ['0:0:0:0:0:ffff:c000:201', '"192.0.2.1"'],
  ];
  const iv = new Uint8Array(12);
  for (const [item, fixed] of cases) {
    for (const mint of [() => gen.createToken({ apiKey: 'sk', ips: [item] }), () => gen.encryptToken({ ...BASE, ips: ['10.0.0.0/8', item] })]) {
      const e = await refusal(mint());
      assert.equal(e.argument, 'ips', item);
      assert.ok(e.message.includes('IPv4-mapped') && e.message.includes(`write ${fixed}`), e.message);
    }
  }
  // A token holding one (minted by another tool) still decodes, as at the relay.
  const { contentKey, kid } = await deriveContentKey(KEY);
  const key = await crypto.subtle.importKey('raw', contentKey, 'AES-GCM', false, ['encrypt']);
  const header = Buffer.from(`{"alg":"dir","enc":"A256GCM","kid":"${kid}"}`).toString('base64url');
  const plain = Buffer.from(JSON.stringify({ ...BASE, exp: 4e9, ips: ['::ffff:1.2.3.4'] }));
  const sealed = Buffer.from(await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: Buffer.from(header) }, key, plain));
  const b64 = (b) => Buffer.from(b).toString('base64url');
  const raw = `${header}..${b64(iv)}.${b64(sealed.subarray(0, -16))}.${b64(sealed.subarray(-16))}`;
  assert.deepEqual((await claimsOf(raw)).ips, ['::ffff:1.2.3.4']);
  for (const item of ['::fffe:0:0/95', '::/96', '::/0', '::1', '::ffff', '64:ff9b::1.2.3.4', '::1.2.3.4']) {
    assert.deepEqual((await claimsOf(await gen.createToken({ apiKey: 'sk', ips: [item] }))).ips, [item]);
  }
});
