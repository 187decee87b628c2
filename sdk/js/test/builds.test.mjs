// Packaging: the ESM and the CJS builds both load through the `exports` map
// and mint the same token; types ship for both; no runtime dependencies;
// the Node floor (global WebCrypto) is documented and its absence explained.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as esm from 'relayapi-sdk';
import { SDK_DIR, VECTORS } from './harness.mjs';

const require = createRequire(import.meta.url);
const basic = VECTORS.vectors.find((v) => v.name === 'basic');
const iv = new Uint8Array(Buffer.from(basic.iv, 'hex'));

test('package.json: ESM + CJS exports with types, zero runtime dependencies', () => {
  const pkg = JSON.parse(readFileSync(join(SDK_DIR, 'package.json'), 'utf8'));
  assert.equal(pkg.name, 'relayapi-sdk');
  assert.equal(pkg.dependencies, undefined, 'no runtime dependencies');
  const root = pkg.exports['.'];
  for (const cond of ['import', 'require']) {
    for (const f of [root[cond].types, root[cond].default]) assert.ok(existsSync(join(SDK_DIR, f)), f);
  }
  assert.deepEqual(JSON.parse(readFileSync(join(SDK_DIR, 'dist/cjs/package.json'), 'utf8')), { type: 'commonjs' });
  const dts = readFileSync(join(SDK_DIR, 'dist/esm/token.d.ts'), 'utf8');
  assert.ok(!dts.includes('_mintWith'), 'test hook stripped from declarations');
});

test('ESM and CJS builds both mint the basic and a policy vector', async () => {
  const cjs = require('relayapi-sdk');
  assert.notEqual(cjs.TokenGenerator, esm.TokenGenerator, 'two distinct builds');
  for (const mod of [esm, cjs]) {
    const gen = new mod.TokenGenerator(basic.aes_key);
    assert.equal(await gen._mintWith({ claims: basic.claims, iv }), basic.token);
    const policy = VECTORS.vectors.find((v) => v.name === 'key-ref-every-claim');
    assert.equal(await gen._mintWith({ claims: policy.claims, iv: new Uint8Array(Buffer.from(policy.iv, 'hex')) }), policy.token);
    await assert.rejects(gen.createToken({ apiKey: 'k', ips: ['10.0.0.1/8'] }), mod.InvalidArgumentError);
    const client = new mod.RelayAPIClient({
      version: '1.0.0',
      server: { host: 'http://localhost', port: 8840, base_path: 'relayapi' },
      crypto: { method: 'aes', aes_key: basic.aes_key, aes_iv_seed: '00' },
    });
    const url = await client.generateUrl({ apiKey: 'sk-x' });
    assert.match(url, /^http:\/\/localhost:8840\/relayapi\/eyJ[\w-]+\.\.[\w-]+\.[\w-]+\.[\w-]+\/$/);
    assert.ok(new mod.InvalidArgumentError('a', 'b') instanceof mod.RelayAPIError);
  }
});

test('src imports nothing but relative modules (WebCrypto only; node:fs only inside fromFile)', () => {
  for (const f of ['index', 'client', 'token', 'claims', 'policy', 'config', 'errors', 'encoding']) {
    const src = readFileSync(join(SDK_DIR, 'src', `${f}.ts`), 'utf8');
    for (const m of src.matchAll(/(?:from|import\()\s*'([^']+)'/g)) {
      assert.ok(m[1].startsWith('./') || (f === 'client' && m[1] === 'node:fs/promises'), `${f}.ts imports ${m[1]}`);
    }
  }
});

// Node 18 has no global WebCrypto without a flag; 20 is the first LTS with it.
test('engines and README say Node >= 20; without global WebCrypto both builds say so', () => {
  const pkg = JSON.parse(readFileSync(join(SDK_DIR, 'package.json'), 'utf8'));
  assert.equal(pkg.engines.node, '>=20');
  for (const doc of ['README.md', 'README_CN.md']) {
    const text = readFileSync(join(SDK_DIR, doc), 'utf8');
    assert.match(text, /Node >= 20/, doc);
    assert.doesNotMatch(text, /Node >= 18/, doc);
  }
  // Simulates Node 18: the same globals minus `crypto`.
  const script = `
    delete globalThis.crypto;
    const outcome = (p) => p.then(() => 'ok', (e) => [e.constructor.name, e.code, e.message].join(' | '));
    const esm = await import('relayapi-sdk');
    const cjs = (await import('node:module')).createRequire(process.cwd() + '/')('relayapi-sdk');
    const out = [];
    for (const m of [esm, cjs]) {
      const gen = new m.TokenGenerator('${'ab'.repeat(32)}');
      out.push(await outcome(gen.createToken({ apiKey: 'k' })), await outcome(gen.kid()));
    }
    console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: SDK_DIR, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const outcomes = JSON.parse(r.stdout);
  assert.equal(outcomes.length, 4);
  for (const o of outcomes) {
    assert.equal(o, 'RelayAPIError | relayapi_error | relayapi-sdk needs WebCrypto (globalThis.crypto): use Node >= 20, Deno, Bun, a browser or an edge runtime');
  }
});

test('types: test/types/usage.ts type-checks against the published declarations (and its @ts-expect-error lines fail)', () => {
  const tsc = join(SDK_DIR, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(process.execPath, [tsc, '-p', join(SDK_DIR, 'test', 'types')], { encoding: 'utf8' });
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
});

test('examples/.env.example: RELAYAPI_RAI, resolved from sdk/js (where the README runs them), is the repo root default.rai', () => {
  const text = readFileSync(join(SDK_DIR, 'examples', '.env.example'), 'utf8');
  const rai = /^RELAYAPI_RAI=(.*)$/m.exec(text)?.[1];
  assert.equal(resolve(SDK_DIR, rai), resolve(SDK_DIR, '..', '..', 'default.rai'));
});
