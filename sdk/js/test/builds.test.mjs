// Packaging: the ESM and the CJS builds both load through the `exports` map
// and mint the same token; types ship for both; no runtime dependencies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
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
