// Image generation through the relay with the official `openai` package.
// (The bundled relayapi-mock has no images endpoint: run this against a real provider.)
import OpenAI from 'openai';
import { relay, settings } from './_env.mjs';

const token = await relay.createToken({
  apiKey: settings.providerKey,
  provider: settings.provider,
  expireSeconds: 300,
  maxCalls: 1,
  model: settings.imageModel,
});
const openai = new OpenAI({ baseURL: relay.baseUrl, apiKey: token, maxRetries: 0 });
const res = await openai.images.generate({
  model: settings.imageModel,
  prompt: 'A lighthouse relaying a beam of light across the sea, watercolour',
  size: '1024x1024',
});
console.log(res.data?.[0]?.url ?? `${res.data?.[0]?.b64_json?.length ?? 0} base64 characters`);
