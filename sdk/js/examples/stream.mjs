// Streaming chat through the relay: chunks are printed as the provider sends them.
//
// Uses the one-step token URL (`generateUrl`): handy when the front-end SDK
// only lets you set a base URL. Prefer the header-passed token (chat.mjs)
// where the SDK allows it.
import OpenAI from 'openai';
import { relay, settings } from './_env.mjs';

// 1. Backend: `http://relay:8840/relayapi/<token>/`, valid for 5 minutes, one model only.
const baseURL = await relay.generateUrl({
  apiKey: settings.providerKey,
  provider: settings.provider,
  expireSeconds: 300,
  maxCalls: 3,
  model: settings.model,
});

// 2. Front end: the token is in the URL, so the apiKey is a placeholder.
const openai = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
const stream = await openai.chat.completions.create({
  model: settings.model,
  messages: [{ role: 'user', content: 'Count from one to five.' }],
  stream: true,
});
for await (const chunk of stream) process.stdout.write(chunk.choices[0]?.delta?.content ?? '');
process.stdout.write('\n');
