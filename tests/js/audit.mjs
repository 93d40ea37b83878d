// Runs graphql-http's GraphQL-over-HTTP audit suite against a server, with a bearer token.
//
//   node tests/js/audit.mjs <url> <token>     (or JOBQL_URL and JOBQL_TOKEN in the environment)
//
// Prints one JSON array on stdout: {id, name, status, reason?} per audit, where status is
// 'ok', or 'error' (a failed MUST), 'warn' (a failed SHOULD) or 'notice' (a failed MAY).
import { auditServer } from 'graphql-http';

const url = process.argv[2] ?? process.env.JOBQL_URL;
const token = process.argv[3] ?? process.env.JOBQL_TOKEN;
if (!url || !token) {
  console.error('usage: node tests/js/audit.mjs <url> <token>');
  process.exit(2);
}

/** fetch, with the token added to whatever headers the audit sends. */
function fetchWithToken(input, init = {}) {
  const headers = new Headers(init.headers);
  headers.set('authorization', `Bearer ${token}`);
  return fetch(input, { ...init, headers });
}

const results = await auditServer({ url, fetchFn: fetchWithToken });
const summary = await Promise.all(
  results.map(async (result) => {
    const entry = { id: result.id, name: result.name, status: result.status };
    if (result.status !== 'ok') {
      entry.reason = result.reason;
      entry.httpStatus = result.response.status;
      entry.contentType = result.response.headers.get('content-type');
      entry.body = await result.response
        .text()
        .then((text) => text.slice(0, 500))
        .catch(() => null); // the audit may have read it already
    }
    return entry;
  }),
);
console.log(JSON.stringify(summary, null, 2));
