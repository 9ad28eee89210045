// Node clients talk through a real gateway over WebSocket with the package
// exactly as an app installs it (scripts/client-test runs this in a
// throwaway project): envelopes both ways, a room with presence, a blink
// (a proxy freezes, then resets, the connection) resumed without losing or
// repeating an envelope, and a gateway restart after which the clients
// reconnect, learn that nothing could be resumed, and are back in their room.
//
// Usage: node node.mjs PATH-TO-signal-gateway WORK-DIR
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createWriteStream } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { SignalClient } from "signal-gateway-client";

const [bin, work] = process.argv.slice(2);
const TIMEOUT_MS = 15_000;
const suffix = Math.random().toString(36).slice(2, 8);

// ---- the gateway and a proxy in front of it ----

/** A free loopback port (the gateway is restarted on the same one). */
async function freePort() {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = /** @type {net.AddressInfo} */ (server.address());
  server.close();
  await once(server, "close");
  return port;
}

const port = await freePort();
const gatewayUrl = `http://127.0.0.1:${port}`;
const log = createWriteStream(join(work, "gateway.log"), { flags: "a" });
/** @type {import("node:child_process").ChildProcess | null} */
let gateway = null;

async function startGateway() {
  const args = [
    "--listen", `127.0.0.1:${port}`, "--cert-dir", join(work, "certs"), "--data-dir", join(work, "data"),
    "--envelope-rate", "1000", "--envelope-burst", "1000",
  ];
  gateway = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } });
  gateway.stdout?.pipe(log, { end: false });
  gateway.stderr?.pipe(log, { end: false });
  const deadline = Date.now() + TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (gateway.exitCode !== null) throw new Error(`the gateway exited (${gateway.exitCode}); see ${work}/gateway.log`);
    if (await fetch(`${gatewayUrl}/readyz`).then((r) => r.ok, () => false)) return;
    await sleep(100);
  }
  throw new Error("the gateway did not get ready");
}

// Killed (by scripts/client-test's timeout): take the gateway along.
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.once(signal, () => {
    gateway?.kill("SIGKILL");
    process.exit(1);
  });
}

async function stopGateway() {
  if (!gateway || gateway.exitCode !== null) return;
  const exited = once(gateway, "exit");
  gateway.kill("SIGTERM");
  await exited;
  gateway = null;
}

/**
 * A TCP proxy to the gateway: `blink()` freezes every connection (what
 * either side writes is dropped, so the gateway writes into a dead path),
 * then resets them, and refuses new ones for a while.
 */
async function startProxy() {
  /** @type {Set<net.Socket>} */
  const sockets = new Set();
  let frozen = false;
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) return client.resetAndDestroy();
    const upstream = net.connect(port, "127.0.0.1");
    for (const [from, to] of [[client, upstream], [upstream, client]]) {
      sockets.add(from);
      from.on("data", (chunk) => frozen || to.write(chunk));
      from.on("error", () => to.destroy());
      from.on("close", () => {
        sockets.delete(from);
        to.destroy();
      });
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port: proxyPort } = /** @type {net.AddressInfo} */ (server.address());
  return {
    url: `http://127.0.0.1:${proxyPort}`,
    /** @param {number} freezeMs @param {number} refuseMs */
    async blink(freezeMs, refuseMs) {
      frozen = true;
      await sleep(freezeMs);
      refusing = true;
      for (const socket of sockets) socket.resetAndDestroy();
      frozen = false;
      await sleep(refuseMs);
      refusing = false;
    },
    close: () => server.close(),
  };
}

// ---- helpers ----

/** @param {number} ms */
function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The next `type` event of `client` whose detail passes `test`.
 * @param {SignalClient} client
 * @param {string} type
 * @param {(detail: any) => boolean} [test]
 */
function next(client, type, test = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${client.username}: no ${type} event in ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    client.addEventListener(type, function on(ev) {
      const { detail } = /** @type {CustomEvent} */ (ev);
      if (!test(detail)) return;
      clearTimeout(timer);
      client.removeEventListener(type, on);
      resolve(detail);
    });
  });
}

/**
 * Every `type` event's detail from now on.
 * @param {SignalClient} client
 * @param {string} type
 */
function record(client, type) {
  /** @type {any[]} */
  const seen = [];
  client.addEventListener(type, (ev) => seen.push(/** @type {CustomEvent} */ (ev).detail));
  return seen;
}

/** @param {() => boolean} check @param {string} what */
async function until(check, what) {
  const deadline = Date.now() + TIMEOUT_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(20);
  }
}

// ---- the run ----

await startGateway();
const proxy = await startProxy();
try {
  // Alice goes through the proxy, with a fixed retry delay of her own.
  const retry = { nextRetryDelayMs: () => 200 };
  const alice = await SignalClient.register(`alice-${suffix}`, { baseUrl: proxy.url });
  const bob = await SignalClient.register(`bob-${suffix}`, { baseUrl: gatewayUrl });
  /** @type {string[]} */
  const aliceStates = [];
  for (const state of ["connecting", "connected", "reconnecting", "disconnected"]) {
    alice.addEventListener(state, () => aliceStates.push(state));
  }
  const welcome = await alice.connect({ transport: "auto", reconnect: retry });
  assert.equal(welcome.transport, "websocket", "Node has no WebTransport: auto falls back to WebSocket");
  assert.equal(typeof welcome.session, "string", "WELCOME names the resume session");
  assert.equal(welcome.resumed, false, "a first connection resumes nothing");
  await bob.connect({ transport: "websocket", reconnect: { initialDelay: 200, maxDelay: 1_000 } });
  assert.equal(alice.state, "connected");

  // Envelopes both ways, and an error from the gateway.
  const offer = next(bob, "message", (e) => e.type === "video-offer");
  alice.send(bob.username, "video-offer", { type: "offer", sdp: "v=0 node" });
  const got = await offer;
  assert.deepEqual({ ...got, seq: undefined }, {
    target: bob.username,
    type: "video-offer",
    originator: alice.username,
    payload: { type: "offer", sdp: "v=0 node" },
    seq: undefined,
  });
  assert.equal(typeof got.seq, "number", "every envelope after WELCOME carries seq");
  const answer = next(alice, "message", (e) => e.type === "video-answer");
  bob.send(alice.username, "video-answer", { type: "answer" });
  assert.equal((await answer).originator, bob.username);
  const missing = next(alice, "message", (e) => e.type === "TARGET_NOT_FOUND");
  alice.send(`nobody-${suffix}`, "video-offer", null);
  assert.equal((await missing).payload.target, `nobody-${suffix}`);

  // A room: members in join order, presence, room envelopes, errors.
  const room = `standup-${suffix}`;
  assert.deepEqual(await alice.join(room), [alice.username]);
  const bobJoined = next(alice, "peer-joined");
  assert.deepEqual(await bob.join(room), [alice.username, bob.username]);
  assert.deepEqual(await bobJoined, { room, user: bob.username });
  assert.deepEqual(alice.members(room), [alice.username, bob.username]);
  assert.deepEqual(alice.rooms, [room]);
  const chat = next(alice, "room-message");
  bob.sendToRoom(room, "chat", { text: "hello room" });
  const heard = await chat;
  assert.deepEqual([heard.room, heard.originator, heard.type, heard.payload], [room, bob.username, "chat", { text: "hello room" }]);
  const carol = await SignalClient.register(`carol-${suffix}`, { baseUrl: gatewayUrl });
  await carol.connect({ transport: "websocket" });
  await carol.join(room);
  await until(() => alice.members(room).length === 3, "alice sees carol");
  const carolLeft = next(alice, "peer-left");
  await carol.leave(room);
  assert.deepEqual(await carolLeft, { room, user: carol.username, reason: "left" });
  await assert.rejects(carol.leave(room), { name: "SignalError", code: "NOT_IN_ROOM" });
  await carol.close();
  assert.deepEqual(alice.members(room), [alice.username, bob.username]);

  // A blink: Bob sends 300 envelopes at 200/s; a third of the way in, the
  // proxy freezes Alice's connection for 300 ms (the gateway keeps writing
  // into it), resets it and refuses her for 700 ms more. She resumes: every
  // envelope arrives once and in order, Bob hears no error, and nobody left
  // the room.
  const bobMessages = record(bob, "message");
  const bobLeft = record(bob, "peer-left");
  const counts = record(alice, "message");
  const resumedEvents = record(alice, "resumed");
  const reconnecting = record(alice, "reconnecting");
  const TOTAL = 300;
  let blink = Promise.resolve();
  for (let i = 0; i < TOTAL; i += 1) {
    bob.send(alice.username, "count", { i });
    if (i === 100) blink = proxy.blink(300, 700);
    await sleep(5);
  }
  await blink;
  await until(() => counts.filter((e) => e.type === "count").length >= TOTAL, `alice has all ${TOTAL} envelopes`);
  await sleep(300); // a duplicate would come right behind
  const order = counts.filter((e) => e.type === "count").map((e) => e.payload.i);
  assert.deepEqual(order, [...Array(TOTAL).keys()], "every envelope once, in order, across the blink");
  assert.equal(resumedEvents.length, 1, "one resume");
  assert.equal(resumedEvents[0].resumed, true, "the gateway had everything since the last envelope processed");
  assert.ok(reconnecting.length >= 1 && reconnecting.every((r) => r.delay === 200), "nextRetryDelayMs set the delays");
  assert.equal(reconnecting[0].code, 1006, "the drop's close code");
  assert.equal(reconnecting[0].reason, "CONNECTION_LOST");
  assert.deepEqual(bobMessages.filter((e) => e.originator === ""), [], "Bob heard no error");
  assert.deepEqual(bobLeft, [], "no PEER_LEFT for a blink");
  assert.deepEqual(alice.members(room), [alice.username, bob.username]);
  assert.deepEqual(aliceStates.slice(0, 3), ["connecting", "connected", "reconnecting"], "alice's states");
  assert.deepEqual(new Set(aliceStates.slice(3)), new Set(["reconnecting", "connected"]), "alice's states after the blink");
  assert.equal(aliceStates.at(-1), "connected");

  // A restart: the gateway's state is gone, so nothing can be resumed; the
  // clients say so, join their room again by themselves, and talk on.
  const bothResumed = Promise.all([next(alice, "resumed"), next(bob, "resumed")]);
  const shutdown = next(alice, "close");
  await stopGateway();
  assert.deepEqual(
    (({ code, reason, willReconnect }) => ({ code, reason, willReconnect }))(await shutdown),
    { code: 1001, reason: "SHUTDOWN", willReconnect: true },
  );
  await startGateway();
  for (const detail of await bothResumed) assert.equal(detail.resumed, false, "a restarted gateway resumes nothing");
  await until(() => alice.members(room).length === 2 && bob.members(room).length === 2, "both are back in the room");
  const after = next(bob, "room-message");
  alice.sendToRoom(room, "chat", { text: "still here" });
  assert.equal((await after).payload.text, "still here");

  const again = await SignalClient.fromToken(alice.token, { baseUrl: gatewayUrl });
  assert.equal(again.username, alice.username);
  const ended = next(alice, "disconnected");
  await alice.close();
  assert.deepEqual(await ended, { code: 1000, reason: "CLOSED", message: "closed by the client" });
  assert.equal(alice.state, "disconnected");
  await bob.close();
  console.log(
    `node client: envelopes, room presence, ${TOTAL} envelopes across a blink each once and in order ` +
      `(resumed after ${reconnecting.length} attempts, ${resumedEvents[0].replayed} replayed), restart: ok`,
  );
} finally {
  proxy.close();
  await stopGateway();
  log.end();
}
