// What the Node client scripts share: arguments, the job subscription, queueing a welcome email,
// and how a run is reported (one JSON object on stdout).
import { randomUUID } from 'node:crypto';

export const JOB_SUBSCRIPTION = `
  subscription Follow($id: ID!) {
    job(id: $id) {
      id kind state done progress
      result { __typename ... on EmailResult { recipient messageId } }
      error { code message retryable }
    }
  }`;

const SEND_WELCOME = `
  mutation Send($email: String!, $username: String!, $delaySeconds: Int!) {
    sendWelcomeEmail(email: $email, username: $username, delaySeconds: $delaySeconds) {
      id kind state done
    }
  }`;

/** `<script> <url> <token> [job id]`; the URL and token may come as JOBQL_URL and JOBQL_TOKEN.
 * An empty token means: send none. */
export function parseArgs(usage) {
  const url = process.argv[2] ?? process.env.JOBQL_URL;
  const token = process.argv[3] ?? process.env.JOBQL_TOKEN;
  if (!url || token === undefined) {
    console.error(`usage: ${usage}`);
    process.exit(2);
  }
  return { url, token, jobId: process.argv[4] };
}

export function authorization(token) {
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** Queues a welcome email to a fresh address over plain HTTP; returns the job. The delay keeps
 * it PENDING while the client subscribes. */
export async function queueWelcomeEmail(url, token, delaySeconds = 2) {
  const email = `js-${randomUUID()}@example.com`;
  const response = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json;q=0.9',
      ...authorization(token),
    },
    body: JSON.stringify({
      query: SEND_WELCOME,
      variables: { email, username: 'Node', delaySeconds },
    }),
  });
  const body = await response.json();
  if (!response.ok || body.errors) {
    throw new Error(`sendWelcomeEmail: HTTP ${response.status} ${JSON.stringify(body)}`);
  }
  return { email, ...body.data.sendWelcomeEmail };
}

/** Collects every result an async iterator of execution results gives, until it ends, fails,
 * or `timeoutMs` passes. */
export async function collect(results, timeoutMs = 45_000) {
  const events = [];
  let error = null;
  const timer = setTimeout(() => {
    error = `timed out after ${timeoutMs} ms`;
    results.return?.();
  }, timeoutMs);
  try {
    for await (const result of results) {
      events.push(result);
    }
  } catch (err) {
    error = describe(err);
  } finally {
    clearTimeout(timer);
  }
  return { events, error };
}

function describe(err) {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  if (Array.isArray(err)) return JSON.stringify(err); // GraphQL errors
  if (err && typeof err === 'object' && 'code' in err) return `close ${err.code} ${err.reason}`; // CloseEvent
  return String(err);
}

export function report(run) {
  console.log(JSON.stringify(run));
}
