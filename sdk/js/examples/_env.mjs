// Shared setup of the examples: load ./.env if present, read the settings,
// and build the backend's RelayAPIClient from the .rai file.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { RelayAPIClient } from 'relayapi-sdk';

const envFile = fileURLToPath(new URL('.env', import.meta.url));
if (existsSync(envFile) && typeof process.loadEnvFile === 'function') process.loadEnvFile(envFile);

export const settings = {
  rai: process.env.RELAYAPI_RAI || 'default.rai',
  providerKey: process.env.RELAYAPI_PROVIDER_KEY,
  provider: process.env.RELAYAPI_PROVIDER || 'openai',
  model: process.env.RELAYAPI_MODEL || 'gpt-4o-mini',
  embeddingModel: process.env.RELAYAPI_EMBEDDING_MODEL || 'text-embedding-3-small',
  imageModel: process.env.RELAYAPI_IMAGE_MODEL || 'dall-e-3',
};

if (!settings.providerKey) {
  console.error('Set RELAYAPI_PROVIDER_KEY (see examples/.env.example).');
  process.exit(2);
}

/** The backend side: load the .rai once, mint per request. */
export const relay = await RelayAPIClient.fromFile(settings.rai);
