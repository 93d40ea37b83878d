// What both scripts of the job page (GET /) open their subscriptions with: a graphql-ws
// client (global `graphqlWs`, the UMD build) for this server's /graphql, carrying the
// bearer token in connection_init. `on`: graphql-ws's event listeners (`connected`, ...).
"use strict";

window.jobqlSocket = function (token, on = {}) {
  const url = new URL("/graphql", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return graphqlWs.createClient({
    url: url.href,
    connectionParams: { Authorization: `Bearer ${token}` },
    retryAttempts: 3,
    on,
  });
};
