// PeerJS server (npm package `peer`) as scripts/bench runs it: the
// library's own PeerServer on loopback, with its defaults except the
// concurrent-client limit (5,000 by default; the idle-memory scenario holds
// 10,000). Unlike the `peerjs` CLI it logs nothing per connection, as the
// gateway logs nothing per connection at the level the bench runs it.
//
// Usage: node server.cjs <dir holding node_modules/peer> <port>
"use strict";
const path = require("node:path");

const [dir, port] = process.argv.slice(2);
if (!dir || !port) {
  console.error("usage: node server.cjs <peer install dir> <port>");
  process.exit(2);
}
const { PeerServer } = require(path.join(path.resolve(dir), "node_modules", "peer"));

const server = PeerServer(
  {
    host: "127.0.0.1",
    port: Number(port),
    path: "/",
    key: "peerjs",
    concurrent_limit: 1000000,
  },
  (http) => console.log(`PeerServer listening on 127.0.0.1:${http.address().port}`),
);
server.on("error", (err) => console.error(`PeerServer error: ${err}`));
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => process.exit(0));
}
