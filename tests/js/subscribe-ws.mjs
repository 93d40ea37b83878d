// Follows a job with the graphql-ws client (protocol graphql-transport-ws), the token in the
// connection_init payload.
//
//   node --experimental-websocket tests/js/subscribe-ws.mjs <url> <token> [job id]
//
// Without a job id it first queues a welcome email. Prints {queued, events, error}: `events` are
// the execution results received, in order.
import { createClient } from 'graphql-ws';

import {
  JOB_SUBSCRIPTION,
  authorization,
  collect,
  parseArgs,
  queueWelcomeEmail,
  report,
} from './common.mjs';

if (typeof WebSocket !== 'function') {
  console.error('no global WebSocket: run node with --experimental-websocket (Node 20)');
  process.exit(2);
}

const { url, token, jobId } = parseArgs('subscribe-ws.mjs <url> <token> [job id]');
const queued = jobId ? null : await queueWelcomeEmail(url, token);

const client = createClient({
  url: url.replace(/^http/, 'ws'),
  webSocketImpl: WebSocket,
  connectionParams: authorization(token),
  retryAttempts: 0,
});
const results = client.iterate({
  query: JOB_SUBSCRIPTION,
  variables: { id: jobId ?? queued.id },
});
const { events, error } = await collect(results);
await client.dispose();
report({ queued, events, error });
