// End-to-end: the web-chat page in headless Chromium streams a chat through a
// real relay from the mock provider.
//
// Starts `relayapi-mock` (random provider key K), `relayapi serve` (OpenAI
// pointed at the mock) and server.mjs (mints token URLs with relayapi-sdk), all
// on 127.0.0.1 with port 0: the page's origin and the relay's differ, so the
// browser really does CORS. Then drives the page with playwright-core and
// Debian's Chromium and checks: progressive rendering of the stream, CORS
// preflights answered by the relay, an exhausted token refreshed from the
// backend, and that K never reaches the page (network traffic, DOM, storage).
//
// Needs: target/debug/relayapi{,-mock} (or RELAYAPI_BIN / RELAYAPI_MOCK_BIN),
// sdk/js built, public/bundle.js (built here if missing), /usr/bin/chromium (or
// CHROMIUM_PATH); without Chromium every test is skipped with a message.
// Run: `scripts/test-web-chat.sh`, or `node --test examples/web-chat/test/`.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, existsSync, rmSync, openSync, closeSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const HERE = dirname(fileURLToPath(import.meta.url));
const APP = resolve(HERE, '..');
const REPO = resolve(APP, '..', '..');
const RELAYAPI = process.env.RELAYAPI_BIN || join(REPO, 'target', 'debug', 'relayapi');
const MOCK = process.env.RELAYAPI_MOCK_BIN || join(REPO, 'target', 'debug', 'relayapi-mock');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const STARTUP_MS = 30_000;
const STREAM_TIMEOUT_MS = 30_000;
const PROMPT = 'Hello from the browser, relay';
const PROMPT2 = 'And once more';

const childEnv = (extra = {}) => {
  const env = { ...process.env, NO_COLOR: '1' };
  for (const k of Object.keys(env)) {
    if (k.startsWith('RELAYAPI_') || /_proxy$/i.test(k) || k === 'PROVIDER_API_KEY') delete env[k];
  }
  return { ...env, ...extra };
};

/** Spawns `argv`, resolves with the URL from its first stdout line. */
function start(name, argv, cwd, env = childEnv()) {
  const stderrFd = openSync(join(cwd, `${name}.stderr`), 'w');
  const child = spawn(argv[0], argv.slice(1), { cwd, env, stdio: ['ignore', 'pipe', stderrFd] });
  closeSync(stderrFd);
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name} printed no address within ${STARTUP_MS} ms`));
    }, STARTUP_MS);
    child.once('exit', (code) => {
      clearTimeout(timer);
      const err = readFileSync(join(cwd, `${name}.stderr`), 'utf8').slice(-2000);
      reject(new Error(`${name} exited early with ${code}:\n${err}`));
    });
    const lines = createInterface({ input: child.stdout });
    lines.once('line', (line) => {
      clearTimeout(timer);
      const m = /^listening on (http:\/\/127\.0\.0\.1:(\d+))\/?$/.exec(line.trim());
      if (!m) return reject(new Error(`${name}: unexpected first line ${JSON.stringify(line)}`));
      child.stdout.resume(); // keep draining
      resolvePromise({ child, url: m[1], port: Number(m[2]), origin: m[1] });
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

const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  console.log(
    `SKIP: ${CHROMIUM} not found, so the web-chat browser tests are skipped. ` +
      'Install it with `apt-get install -y chromium` (or set CHROMIUM_PATH).',
  );
}

describe('web chat in headless Chromium', () => {
  if (!haveChromium) {
    test('web chat end to end', (t) => {
      t.skip(`${CHROMIUM} not found (apt-get install -y chromium)`);
    });
    return;
  }

  let dir, mock, relay, web, browser;
  let providerKey;
  /** Everything the page's network saw, as text to search. */
  const seen = []; // { what, text }
  const bodyPromises = [];
  const cdpRequests = new Map(); // requestId -> { method, url, type, status, headers }
  const pageErrors = [];
  const samples = []; // [{ t, text, state }]
  let finalText, finalState, secondText, secondState, dom, storage;
  const relayResponses = []; // { method, url, status, headers } from Playwright

  before(async () => {
    for (const bin of [RELAYAPI, MOCK]) {
      assert.ok(existsSync(bin), `${bin} missing: run \`cargo build -p relayapi -p relayapi-mock\``);
    }
    // The page bundle (scripts/test-web-chat.sh builds it too).
    const esbuild = join(APP, 'node_modules', '.bin', 'esbuild');
    assert.ok(existsSync(esbuild), `${esbuild} missing: run \`npm ci --prefix examples/web-chat\``);
    execFileSync('npm', ['run', '--silent', 'build', '--', '--log-level=warning'], { cwd: APP, stdio: ['ignore', 'ignore', 'inherit'] });

    dir = mkdtempSync(join(tmpdir(), 'relayapi-web-chat-'));
    providerKey = `sk-mock-${randomBytes(16).toString('hex')}`;
    mock = await start('mock', [MOCK, '--listen', '127.0.0.1:0', '--api-key', providerKey], dir);
    const config = {
      server: { port: 0 },
      usage: { store: 'memory' },
      providers: { openai: { base_url: `${mock.url}/v1` } },
    };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    // The .rai says 8840 (as a deployed one would); RELAY_URL tells server.mjs
    // where the browser reaches this test's relay.
    const rai = execFileSync(RELAYAPI, ['gen-config', '--host', 'http://127.0.0.1', '--port', '8840'], {
      cwd: dir,
      env: childEnv(),
      encoding: 'utf8',
    });
    const raiPath = join(dir, 'web-chat.rai');
    writeFileSync(raiPath, rai);
    relay = await start('relay', [RELAYAPI, 'serve', '--config', join(dir, 'config.json'), '--rai', raiPath], dir);
    web = await start(
      'web',
      [process.execPath, join(APP, 'server.mjs')],
      dir,
      childEnv({
        RELAYAPI_RAI: raiPath,
        PROVIDER_API_KEY: providerKey,
        PROVIDER: 'openai',
        RELAY_URL: relay.url,
        PORT: '0',
        HOST: '127.0.0.1',
        MAX_CALLS: '1', // so the second message needs a fresh token
        EXPIRE_SECONDS: '300',
      }),
    );
    assert.notEqual(web.origin, relay.origin, 'the page and the relay must be different origins');

    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 60_000 });
    const context = await browser.newContext();
    const page = await context.newPage();

    // Chromium's own view of the network, preflights included (Playwright
    // does not report CORS preflights as page requests).
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const rec = (id) => {
      if (!cdpRequests.has(id)) cdpRequests.set(id, {});
      return cdpRequests.get(id);
    };
    cdp.on('Network.requestWillBeSent', (e) => {
      Object.assign(rec(e.requestId), { method: e.request.method, url: e.request.url, type: e.type });
      seen.push({ what: `cdp request ${e.request.method} ${e.request.url}`, text: JSON.stringify(e) });
    });
    cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
      seen.push({ what: `cdp request extra ${e.requestId}`, text: JSON.stringify(e) });
    });
    cdp.on('Network.responseReceived', (e) => {
      const r = Object.assign(rec(e.requestId), {
        url: e.response.url,
        type: e.type,
        status: e.response.status,
        headers: e.response.headers,
      });
      seen.push({ what: `cdp response ${e.response.url}`, text: JSON.stringify(e) });
      // A body the page reads as a stream is not kept for Playwright's
      // response.text() (sometimes "No data found for resource"): have
      // Chromium hand over every chunk as it arrives instead.
      if (r.method === 'POST' && e.response.url.startsWith(`${relay.origin}/relayapi/`)) {
        bodyPromises.push(
          cdp.send('Network.streamResourceContent', { requestId: e.requestId }).then(
            ({ bufferedData }) => {
              r.streamed = [Buffer.from(bufferedData ?? '', 'base64'), ...(r.streamed ?? [])];
            },
            () => {},
          ),
        );
      }
    });
    cdp.on('Network.dataReceived', (e) => {
      if (e.data) {
        const r = rec(e.requestId);
        (r.streamed ??= []).push(Buffer.from(e.data, 'base64'));
      }
    });
    cdp.on('Network.responseReceivedExtraInfo', (e) => {
      seen.push({ what: `cdp response extra ${e.requestId}`, text: JSON.stringify(e) });
    });

    page.on('pageerror', (err) => pageErrors.push(String(err)));
    page.on('request', (req) => {
      bodyPromises.push(
        req.allHeaders().then((h) => {
          seen.push({ what: `request ${req.method()} ${req.url()}`, text: `${req.url()}\n${JSON.stringify(h)}\n${req.postData() ?? ''}` });
        }, () => {}),
      );
    });
    page.on('response', (res) => {
      const req = res.request();
      bodyPromises.push(
        (async () => {
          const headers = await res.allHeaders().catch(() => ({}));
          if (res.url().startsWith(relay.origin)) {
            relayResponses.push({ method: req.method(), url: res.url(), status: res.status(), headers });
          }
          const body = await res.text().catch((e) => `<<body unavailable: ${e.message}>>`);
          seen.push({ what: `response ${req.method()} ${res.url()} ${res.status()}`, text: `${JSON.stringify(headers)}\n${body}` });
        })(),
      );
    });

    await page.goto(`${web.url}/?slow=1`);
    await page.waitForSelector('#status[data-state="ready"]', { timeout: 15_000 });

    const sendAndSample = async (prompt, sink) => {
      await page.fill('#prompt', prompt);
      await page.click('#send');
      const t0 = Date.now();
      for (;;) {
        const s = await page.evaluate(() => {
          const all = document.querySelectorAll('#messages .msg.assistant');
          const last = all[all.length - 1];
          return { text: last ? last.textContent : '', state: document.getElementById('status').dataset.state };
        });
        sink?.push({ t: Date.now() - t0, ...s });
        if (s.state === 'done' || s.state === 'error') return s;
        if (Date.now() - t0 > STREAM_TIMEOUT_MS) return { ...s, state: 'timeout' };
        await new Promise((r) => setTimeout(r, 25));
      }
    };

    ({ text: finalText, state: finalState } = await sendAndSample(PROMPT, samples));
    ({ text: secondText, state: secondState } = await sendAndSample(PROMPT2));

    dom = await page.content();
    storage = await page.evaluate(() => JSON.stringify({ cookie: document.cookie, local: { ...localStorage }, session: { ...sessionStorage } }));
    const cookies = await context.cookies();
    seen.push({ what: 'dom', text: dom }, { what: 'storage', text: storage }, { what: 'cookies', text: JSON.stringify(cookies) });
    await Promise.all(bodyPromises);
    for (const r of cdpRequests.values()) {
      if (r.streamed) seen.push({ what: `cdp stream ${r.method} ${r.url}`, text: Buffer.concat(r.streamed).toString('utf8') });
    }
    if (process.env.WEB_CHAT_DEBUG) {
      console.log(JSON.stringify({ samples, cdp: [...cdpRequests.values()].map(({ headers, ...r }) => r), relayResponses: relayResponses.map((r) => [r.method, r.status]) }, null, 1));
    }
  }, { timeout: 180_000 });

  after(async () => {
    await browser?.close().catch(() => {});
    await Promise.all([stop(web?.child), stop(relay?.child), stop(mock?.child)]);
    if (dir && !process.env.KEEP_TMP) rmSync(dir, { recursive: true, force: true });
  });

  test('the streamed answer appears progressively and is the mock reply', () => {
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
    assert.equal(finalState, 'done', `chat did not finish: state ${finalState}, text ${JSON.stringify(finalText)}`);
    assert.equal(finalText, `mock reply to: ${PROMPT}`);
    const partial = [...new Set(samples.filter((s) => s.state === 'streaming').map((s) => s.text))].filter(
      (t) => t !== '' && t !== finalText,
    );
    // 8 chunks 150 ms apart: the bubble must have shown several intermediate,
    // growing prefixes of the answer before it was complete.
    assert.ok(
      partial.length >= 2,
      `text grew in ${partial.length} visible intermediate step(s): ${JSON.stringify(samples.map((s) => [s.t, s.state, s.text]))}`,
    );
    for (const t of partial) assert.ok(finalText.startsWith(t), `${JSON.stringify(t)} is not a prefix of the answer`);
    const lengths = partial.map((t) => t.length);
    assert.deepEqual(lengths, [...lengths].sort((a, b) => a - b), 'the text only grows');
  });

  test('CORS: the relay answers the preflight for the page origin and the POST succeeds', () => {
    const toRelay = [...cdpRequests.values()].filter((r) => r.url?.startsWith(`${relay.origin}/relayapi/`));
    const preflights = toRelay.filter((r) => r.method === 'OPTIONS' || r.type === 'Preflight');
    assert.ok(preflights.length >= 1, `no preflight seen: ${JSON.stringify(toRelay)}`);
    for (const p of preflights) {
      assert.equal(p.status, 204, `preflight ${JSON.stringify(p)}`);
      const h = Object.fromEntries(Object.entries(p.headers).map(([k, v]) => [k.toLowerCase(), v]));
      assert.equal(h['access-control-allow-origin'], web.origin);
      assert.match(h['access-control-allow-methods'] ?? '', /POST/);
    }
    const posts = relayResponses.filter((r) => r.method === 'POST' && r.url.endsWith('/chat/completions'));
    assert.ok(posts.some((r) => r.status === 200), `no successful POST: ${JSON.stringify(posts.map((p) => [p.status, p.url.slice(-40)]))}`);
    for (const p of posts.filter((r) => r.status === 200)) {
      assert.equal(p.headers['access-control-allow-origin'], web.origin);
      assert.match(p.headers['content-type'], /^text\/event-stream/);
    }
  });

  test('an exhausted token (max_calls 1) is replaced by a fresh one from the backend', () => {
    assert.equal(secondState, 'done', `second message: state ${secondState}, text ${JSON.stringify(secondText)}`);
    assert.equal(secondText, `mock reply to: ${PROMPT2}`);
    const posts = relayResponses.filter((r) => r.method === 'POST' && r.url.endsWith('/chat/completions'));
    const refused = posts.filter((r) => r.status === 429);
    assert.equal(refused.length, 1, `one token_exhausted refusal expected: ${JSON.stringify(posts.map((p) => p.status))}`);
    // The refusal carries CORS headers, or the SDK could not have read its code.
    assert.equal(refused[0].headers['access-control-allow-origin'], web.origin);
    const tokens = new Set(posts.map((r) => new URL(r.url).pathname.split('/')[2]));
    assert.equal(tokens.size, 2, 'two different tokens were used');
  });

  test('the provider key never reaches the page', () => {
    // Positive controls: the capture really holds bodies and headers.
    const all = seen.map((s) => s.text).join('\n');
    assert.ok(seen.some((s) => s.what.startsWith('response GET') && s.what.includes('/api/session') && s.text.includes('/relayapi/')), 'session body captured');
    assert.ok(seen.some((s) => s.what.startsWith('request POST') && s.text.includes(PROMPT)), 'request body captured');
    assert.ok(seen.some((s) => /^(cdp stream|response) POST/.test(s.what) && s.text.includes('data: [DONE]')), 'stream body captured');
    assert.ok(all.includes('access-control-allow-origin'), 'headers captured');

    const needles = [providerKey, Buffer.from(providerKey).toString('base64'), Buffer.from(providerKey).toString('base64url'), providerKey.slice(8)];
    const hits = [];
    for (const s of seen) for (const n of needles) if (s.text.includes(n)) hits.push(s.what);
    assert.deepEqual(hits, [], 'the provider key appeared in what the page saw');
  });
});
