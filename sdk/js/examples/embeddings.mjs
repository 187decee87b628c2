// Embeddings through the relay with the official `openai` package.
import OpenAI from 'openai';
import { relay, settings } from './_env.mjs';

const token = await relay.createToken({
  apiKey: settings.providerKey,
  provider: settings.provider,
  expireSeconds: 300,
  maxCalls: 1,
  models: [settings.embeddingModel],
});
const openai = new OpenAI({ baseURL: relay.baseUrl, apiKey: token, maxRetries: 0 });
const res = await openai.embeddings.create({
  model: settings.embeddingModel,
  input: ['RelayAPI keeps provider keys on the server.'],
});
console.log(`${res.data.length} embedding(s), dimension ${res.data[0].embedding.length}`);
