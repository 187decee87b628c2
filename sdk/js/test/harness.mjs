// Shared test harness (no tests here): repo paths, and starting the real
// `relayapi-mock` + `relayapi serve` on 127.0.0.1 port 0. Binaries:
// RELAYAPI_BIN / RELAYAPI_MOCK_BIN, default <repo>/target/debug/.
import { spawn, execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, existsSync, rmSync, openSync, closeSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

export const SDK_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = resolve(SDK_DIR, '..', '..');
export const RELAYAPI = process.env.RELAYAPI_BIN || join(REPO, 'target', 'debug', 'relayapi');
export const MOCK = process.env.RELAYAPI_MOCK_BIN || join(REPO, 'target', 'debug', 'relayapi-mock');
export const VECTORS = JSON.parse(readFileSync(join(REPO, 'testdata', 'vectors', 'token-v2.json'), 'utf8'));
const STARTUP_MS = 30_000;

/**
 * A Python interpreter that can import the Python SDK (`relayapi`), for the
 * cross-language checks: RELAYAPI_SDK_PYTHON, else the repository's .venv
 * (created by scripts/test-sdk-python.sh, which scripts/test.sh runs first).
 * `{ python }`, or `{ skip: reason }`.
 */
export function sdkPython() {
  const candidates = [process.env.RELAYAPI_SDK_PYTHON, join(REPO, '.venv', 'bin', 'python')].filter(Boolean);
  for (const python of candidates) {
    const r = spawnSync(python, ['-c', 'import relayapi'], { encoding: 'utf8' });
    if (!r.error && r.status === 0) return { python };
  }
  return {
    skip: `no Python with the relayapi SDK (tried ${candidates.join(', ')}): run ./scripts/test-sdk-python.sh first or set RELAYAPI_SDK_PYTHON`,
  };
}

/** The environment for child processes, without inherited RELAYAPI_* and proxy settings. */
export const childEnv = (extra = {}) => {
  const env = { ...process.env, NO_COLOR: '1' };
  for (const k of Object.keys(env)) if (k.startsWith('RELAYAPI_') || /_proxy$/i.test(k)) delete env[k];
  return { ...env, ...extra };
};

function start(name, argv, cwd) {
  const stderrFd = openSync(join(cwd, `${name}.stderr`), 'w');
  const child = spawn(argv[0], argv.slice(1), { cwd, env: childEnv(), stdio: ['ignore', 'pipe', stderrFd] });
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
    createInterface({ input: child.stdout }).once('line', (line) => {
      clearTimeout(timer);
      const m = /^listening on (http:\/\/127\.0\.0\.1:(\d+))\/?$/.exec(line.trim());
      if (!m) return reject(new Error(`${name}: unexpected first line ${JSON.stringify(line)}`));
      child.stdout.resume();
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

/**
 * Starts mock + relay. Returns { dir, mockKey, mock, relay, rai, raiPath, stop() }
 * where `rai` (and the file at `raiPath`) carry the relay's real port.
 */
export async function startStack() {
  for (const bin of [RELAYAPI, MOCK]) {
    if (!existsSync(bin)) throw new Error(`${bin} missing: run \`cargo build -p relayapi -p relayapi-mock\``);
  }
  const dir = mkdtempSync(join(tmpdir(), 'relayapi-sdk-js-'));
  const mockKey = `sk-mock-${randomBytes(16).toString('hex')}`;
  const stack = { dir, mockKey };
  try {
    stack.mock = await start('mock', [MOCK, '--listen', '127.0.0.1:0', '--api-key', mockKey], dir);
    const config = {
      server: { port: 0 },
      usage: { store: 'memory' },
      providers: { openai: { base_url: `${stack.mock.url}/v1` } },
    };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    const rai = JSON.parse(
      execFileSync(RELAYAPI, ['gen-config', '--host', 'http://127.0.0.1', '--port', '1'], {
        cwd: dir,
        env: childEnv(),
        encoding: 'utf8',
      }),
    );
    stack.raiPath = join(dir, 'sdk.rai');
    writeFileSync(stack.raiPath, JSON.stringify(rai, null, 2));
    stack.relay = await start('relay', [RELAYAPI, 'serve', '--config', join(dir, 'config.json'), '--rai', stack.raiPath], dir);
    rai.server.port = stack.relay.port;
    writeFileSync(stack.raiPath, JSON.stringify(rai, null, 2));
    stack.rai = rai;
  } catch (e) {
    await stop(stack.relay?.child);
    await stop(stack.mock?.child);
    throw e;
  }
  stack.stop = async () => {
    await stop(stack.relay?.child);
    await stop(stack.mock?.child);
    if (!process.env.KEEP_E2E_TMP) rmSync(dir, { recursive: true, force: true });
  };
  return stack;
}
