// RelayAPI web-chat front end. Bundled with esbuild into public/bundle.js
// (`npm run build`) so the browser gets the official `openai` npm package as
// one ES module.
//
// The page asks its own backend for a session (a short-lived token URL), then
// uses the official SDK exactly as it would against OpenAI, changing only
// `baseURL`. The `apiKey` is a placeholder: the token in the URL is the only
// credential the page ever holds, and the relay ignores whatever the SDK sends
// as `Authorization`.
//
// `?slow=1` (used by the end-to-end test) asks the mock provider to stream
// slowly, through the mock's `"mock"` body field, so progressive rendering is
// observable. Against a real provider leave it off.

import OpenAI from 'openai';

const $ = (id) => document.getElementById(id);
const messagesEl = $('messages');
const form = $('chat');
const promptEl = $('prompt');
const sendBtn = $('send');
const statusEl = $('status');

const slow = new URLSearchParams(location.search).get('slow');
const mockKnobs = slow && slow !== '0' ? { chunk_delay_ms: 150, chunks: 8 } : null;

/** Conversation so far, in OpenAI message form. */
const history = [];
/** { client, model, expiresAt } from /api/session, reused until it expires or runs out. */
let session = null;

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

function addMessage(role, text = '') {
  const el = document.createElement('div');
  el.className = `msg ${role}`;
  el.dataset.role = role;
  el.textContent = text;
  messagesEl.append(el);
  el.scrollIntoView({ block: 'end' });
  return el;
}

async function newSession() {
  const res = await fetch('/api/session', { cache: 'no-store' });
  if (!res.ok) throw new Error(`/api/session answered ${res.status}`);
  const { baseURL, model, expiresAt } = await res.json();
  return {
    client: new OpenAI({
      baseURL,
      apiKey: 'unused', // the token in baseURL is the credential
      dangerouslyAllowBrowser: true, // fine: nothing secret lives in this page
      maxRetries: 0,
    }),
    model: model || 'gpt-4o-mini',
    expiresAt: expiresAt ? Date.parse(expiresAt) : Infinity,
  };
}

async function getSession() {
  if (!session || Date.now() > session.expiresAt - 10_000) session = await newSession();
  return session;
}

/** The relay's own refusals that a fresh token fixes. */
function isStaleToken(err) {
  const code = err?.code ?? err?.error?.code;
  return code === 'token_expired' || code === 'token_exhausted';
}

async function streamReply(bubble) {
  const request = {
    model: session.model,
    messages: history,
    stream: true,
    ...(mockKnobs ? { mock: mockKnobs } : {}),
  };
  const stream = await session.client.chat.completions.create(request);
  let text = '';
  for await (const chunk of stream) {
    const delta = chunk.choices?.[0]?.delta?.content;
    if (delta) {
      text += delta;
      bubble.append(delta); // a text node: provider output is never parsed as HTML
      bubble.scrollIntoView({ block: 'end' });
    }
  }
  return text;
}

async function send(prompt) {
  history.push({ role: 'user', content: prompt });
  addMessage('user', prompt);
  const bubble = addMessage('assistant');
  setStatus('streaming', 'streaming…');
  try {
    await getSession();
    let text;
    try {
      text = await streamReply(bubble);
    } catch (err) {
      if (!isStaleToken(err)) throw err;
      session = await newSession(); // expired or used up: ask the backend for a new one, once
      text = await streamReply(bubble);
    }
    history.push({ role: 'assistant', content: text });
    setStatus('done', 'done');
  } catch (err) {
    history.pop();
    bubble.remove();
    addMessage('error', `Error: ${err?.message ?? err}`);
    setStatus('error', 'error');
  }
}

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const prompt = promptEl.value.trim();
  if (!prompt) return;
  promptEl.value = '';
  sendBtn.disabled = true;
  try {
    await send(prompt);
  } finally {
    sendBtn.disabled = false;
    promptEl.focus();
  }
});

getSession().then(
  () => {
    sendBtn.disabled = false;
    setStatus('ready', 'ready');
  },
  (err) => {
    sendBtn.disabled = false; // sending retries the session
    session = null;
    setStatus('error', `could not get a session: ${err?.message ?? err}`);
  },
);
