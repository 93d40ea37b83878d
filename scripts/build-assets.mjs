// Copies the browser builds jobql serves from node_modules into jobql/static/vendor.
import { copyFileSync, mkdirSync } from "node:fs";

const vendor = new URL("../jobql/static/vendor/", import.meta.url);
mkdirSync(vendor, { recursive: true });
const files = {
  "react/umd/react.production.min.js": "react.production.min.js",
  "react-dom/umd/react-dom.production.min.js": "react-dom.production.min.js",
  "graphql-ws/umd/graphql-ws.min.js": "graphql-ws.min.js",
};
for (const [from, to] of Object.entries(files)) {
  copyFileSync(new URL(`../node_modules/${from}`, import.meta.url), new URL(to, vendor));
}
