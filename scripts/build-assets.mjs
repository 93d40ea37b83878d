// Copies the browser builds jobql serves (GraphiQL at /graphql, the job page at /) from
// node_modules into jobql/static/vendor, so that neither page needs a CDN. Versions are
// pinned in package.json; the pages name the same versions for their CDN fallback.
import { copyFileSync, existsSync, mkdirSync } from "node:fs";

const nodeModules = new URL("../node_modules/", import.meta.url);
const vendor = new URL("../jobql/static/vendor/", import.meta.url);
mkdirSync(vendor, { recursive: true });

// node_modules path -> file name under /static/vendor/
const files = {
  // GraphiQL: React, then its bundle (which includes graphql and the graphql-ws client it
  // uses), then the explorer plugin
  "react/umd/react.production.min.js": "react.production.min.js",
  "react-dom/umd/react-dom.production.min.js": "react-dom.production.min.js",
  "graphiql/graphiql.min.js": "graphiql.min.js",
  "graphiql/graphiql.min.css": "graphiql.min.css",
  "@graphiql/plugin-explorer/dist/index.umd.js": "graphiql-plugin-explorer.umd.js",
  "@graphiql/plugin-explorer/dist/style.css": "graphiql-plugin-explorer.css",
  // The job page (no framework): only the subscription client, global `graphqlWs`
  "graphql-ws/umd/graphql-ws.min.js": "graphql-ws.min.js",
};

const missing = Object.keys(files).filter((from) => !existsSync(new URL(from, nodeModules)));
if (missing.length) {
  console.error(`build-assets: not in node_modules (run npm ci): ${missing.join(", ")}`);
  process.exit(1);
}
for (const [from, to] of Object.entries(files)) {
  copyFileSync(new URL(from, nodeModules), new URL(to, vendor));
}
console.log(`build-assets: ${Object.keys(files).length} files in jobql/static/vendor/`);
