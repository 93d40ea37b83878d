// Follows a job with the graphql-sse client over Server-Sent Events ("distinct connections
// mode": one POST per subscription), the token in the Authorization header.
//
//   node tests/js/subscribe-sse.mjs <url> <token> [job id]
//
// Without a job id it first queues a welcome email. An empty token sends no Authorization
// header. Prints {queued, events, error}: `events` are the execution results received, in order.
import { createClient } from 'graphql-sse';

import {
  JOB_SUBSCRIPTION,
  authorization,
  collect,
  parseArgs,
  queueWelcomeEmail,
  report,
} from './common.mjs';

const { url, token, jobId } = parseArgs('subscribe-sse.mjs <url> <token> [job id]');
const queued = jobId ? null : await queueWelcomeEmail(url, token);

const client = createClient({ url, headers: authorization(token), retryAttempts: 0 });
const results = client.iterate({
  query: JOB_SUBSCRIPTION,
  variables: { id: jobId ?? queued.id },
});
const { events, error } = await collect(results);
client.dispose();
report({ queued, events, error });
