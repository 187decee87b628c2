// Non-streaming chat through the relay with the official `openai` package.
//
// Backend: mint a short-lived token. Front end: give it to the OpenAI SDK as
// its apiKey, with the relay's base URL (header-passed token: it stays out of
// URLs, proxy logs and browser history).
import OpenAI from 'openai';
import { relay, settings } from './_env.mjs';

// 1. Backend: a token for 10 minutes and at most 5 calls.
const token = await relay.createToken({
  apiKey: settings.providerKey,
  provider: settings.provider,
  expireSeconds: 600,
  maxCalls: 5,
});

// 2. Front end: the official SDK, pointed at the relay.
const openai = new OpenAI({ baseURL: relay.baseUrl, apiKey: token, maxRetries: 0 });
const reply = await openai.chat.completions.create({
  model: settings.model,
  messages: [{ role: 'user', content: 'Say hello in five words.' }],
});
console.log(reply.choices[0].message.content);
