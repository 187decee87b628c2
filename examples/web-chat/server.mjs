// RelayAPI web-chat demo backend: serves the static page and mints short-lived
// token URLs with relayapi-sdk. The provider key stays in this process; the
// browser only ever receives an encrypted, expiring, call-limited token URL.
//
//   GET /              -> public/index.html
//   GET /bundle.js     -> public/bundle.js (build it with `npm run build`)
//   GET /api/session   -> { "baseURL": "http://relay:8840/relayapi/<token>/", "model", "expiresAt", "maxCalls" }
//
// Env:
//   RELAYAPI_RAI      path to the .rai key file (required)
//   PROVIDER_API_KEY  the real provider key (required; never sent to the browser)
//   PROVIDER          provider id in the relay (default: openai)
//   MODEL             model the page asks for (default: gpt-4o-mini)
//   RELAY_URL         origin of the relay as the browser reaches it, e.g.
//                     http://127.0.0.1:8840 (default: host/port from the .rai)
//   EXPIRE_SECONDS    token lifetime (default: 300)
//   MAX_CALLS         calls per token (default: 10)
//   HOST / PORT       where to listen (default 127.0.0.1:3000; PORT=0 = a free port)
//
// The first stdout line is `listening on http://HOST:PORT`.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const PUBLIC = join(HERE, 'public');

/** relayapi-sdk, with a clear message when this repo's sdk/js is not built yet. */
async function loadSdk() {
  try {
    return await import('relayapi-sdk');
  } catch (e) {
    if (e?.code === 'ERR_MODULE_NOT_FOUND' && String(e.message).includes('relayapi-sdk')) {
      throw new Error(
        'relayapi-sdk not found: run `npm ci` in examples/web-chat, and build the SDK ' +
          '(`npm ci --prefix sdk/js && npm run build --prefix sdk/js` from the repo root)',
      );
    }
    throw e;
  }
}

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`error: ${name} is not set (see examples/web-chat/README.md)`);
    process.exit(2);
  }
  return v;
}

function positiveInt(name, dflt) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) {
    console.error(`error: ${name} must be a positive integer, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return n;
}

const raiPath = required('RELAYAPI_RAI');
const apiKey = required('PROVIDER_API_KEY');
const provider = process.env.PROVIDER || 'openai';
const model = process.env.MODEL || 'gpt-4o-mini';
const expireSeconds = positiveInt('EXPIRE_SECONDS', 300);
const maxCalls = positiveInt('MAX_CALLS', 10);
const relayUrl = process.env.RELAY_URL ? new URL(process.env.RELAY_URL) : null;
const host = process.env.HOST || '127.0.0.1';
const port = process.env.PORT === undefined || process.env.PORT === '' ? 3000 : Number(process.env.PORT);

let relay;
try {
  const { RelayAPIClient } = await loadSdk();
  relay = await RelayAPIClient.fromFile(raiPath); // ConfigError says what is wrong with the file
} catch (e) {
  console.error(`error: ${e?.message ?? e}`);
  process.exit(2);
}

async function mintSession() {
  let baseURL = await relay.generateUrl({ apiKey, provider, expireSeconds, maxCalls });
  if (relayUrl) {
    // The .rai says where the relay is for the backend; the browser may reach it elsewhere.
    const u = new URL(baseURL);
    u.protocol = relayUrl.protocol;
    u.host = relayUrl.host;
    baseURL = u.href;
  }
  return {
    baseURL,
    model,
    expiresAt: new Date(Date.now() + expireSeconds * 1000).toISOString(),
    maxCalls,
  };
}

const STATIC = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/bundle.js': ['bundle.js', 'text/javascript; charset=utf-8'],
  '/bundle.js.map': ['bundle.js.map', 'application/json'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
};

function send(res, status, type, body, extra = {}) {
  res.writeHead(status, {
    'content-type': type,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    ...extra,
  });
  res.end(body);
}

const server = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  try {
    if (path === '/api/session') {
      if (req.method !== 'GET') return send(res, 405, 'application/json', '{"error":"method not allowed"}', { allow: 'GET' });
      // A real backend authenticates its user here before handing out a token.
      return send(res, 200, 'application/json', JSON.stringify(await mintSession()));
    }
    const entry = STATIC[path];
    if (!entry || (req.method !== 'GET' && req.method !== 'HEAD')) {
      return send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
    }
    const file = join(PUBLIC, entry[0]);
    if (!file.startsWith(PUBLIC + sep)) return send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
    let body;
    try {
      body = await readFile(file);
    } catch {
      const hint = entry[0].startsWith('bundle') ? 'run `npm run build` in examples/web-chat\n' : 'not found\n';
      return send(res, 404, 'text/plain; charset=utf-8', hint);
    }
    return send(res, 200, entry[1], req.method === 'HEAD' ? undefined : body);
  } catch (err) {
    // Never echo details: they could include configuration.
    console.error(`request ${req.method} ${path} failed: ${err?.message ?? err}`);
    if (!res.headersSent) send(res, 500, 'application/json', '{"error":"internal error"}');
    else res.destroy();
  }
});

server.listen(port, host, () => {
  const addr = server.address();
  const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  process.stdout.write(`listening on http://${shown}:${addr.port}\n`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections?.();
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
