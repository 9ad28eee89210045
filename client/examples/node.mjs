// Two Node clients talk through a real gateway over WebSocket with the
// package exactly as an app installs it (scripts/client-test runs this in a
// throwaway project). Usage: node node.mjs http://127.0.0.1:PORT
import assert from "node:assert/strict";
import { SignalClient } from "signal-gateway-client";

const baseUrl = process.argv[2];
const suffix = Math.random().toString(36).slice(2, 8);
const TIMEOUT_MS = 10_000;

/** The next `message` event whose envelope passes `test`. */
function next(client, test) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${client.username}: no matching envelope in ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    client.addEventListener("message", function on(ev) {
      if (!test(ev.detail)) return;
      clearTimeout(timer);
      client.removeEventListener("message", on);
      resolve(ev.detail);
    });
  });
}

const alice = await SignalClient.register(`alice-${suffix}`, { baseUrl });
const bob = await SignalClient.register(`bob-${suffix}`, { baseUrl });
const welcome = await alice.connect({ transport: "auto" });
assert.equal(welcome.transport, "websocket", "Node has no WebTransport: auto falls back to WebSocket");
await bob.connect({ transport: "websocket" });

const offer = next(bob, (e) => e.type === "video-offer");
alice.send(bob.username, "video-offer", { type: "offer", sdp: "v=0 node" });
assert.deepEqual(await offer, {
  target: bob.username,
  type: "video-offer",
  originator: alice.username,
  payload: { type: "offer", sdp: "v=0 node" },
});

const answer = next(alice, (e) => e.type === "video-answer");
bob.send(alice.username, "video-answer", { type: "answer" });
assert.equal((await answer).originator, bob.username);

const missing = next(alice, (e) => e.type === "TARGET_NOT_FOUND");
alice.send(`nobody-${suffix}`, "video-offer", null);
assert.equal((await missing).payload.target, `nobody-${suffix}`);

const again = await SignalClient.fromToken(alice.token, { baseUrl });
assert.equal(again.username, alice.username);

await alice.close();
await bob.close();
console.log("node client: envelopes both ways, TARGET_NOT_FOUND, fromToken: ok");
