// @ts-check
/**
 * @file The demo's room page at `/room`: up to four people in one room, each
 * calling every other directly (a mesh of WebRTC peer connections), with the
 * member list. The gateway's rooms say who is there (`join`, `peer-joined`,
 * `peer-left`); each pair negotiates through the gateway with envelopes to
 * one another:
 * - `room-offer`, `room-answer` `{room, description}` and `room-candidate`
 *   `{room, candidate}`; the newcomer offers to everyone already in the
 *   room, so two members never offer to each other at once.
 *
 * The client joins the room again by itself after a reconnect that could not
 * resume; calls already up go on meanwhile (they do not need the gateway).
 * URL options: `?room=` preselects the room, `?transport=websocket` (or
 * `webtransport`) the signalling transport.
 */
import { SignalClient, SignalError } from "./client.js";

/** A mesh: every member sends its media to every other, so it stays small. */
const MAX_MEMBERS = 4;

/**
 * @typedef {object} Peer one member's call
 * @property {RTCPeerConnection} pc
 * @property {HTMLElement} tile
 * @property {RTCIceCandidateInit[]} candidates received before the remote description
 */

const params = new URLSearchParams(location.search);
const TRANSPORT = /** @type {"auto" | "webtransport" | "websocket"} */ (
  ["webtransport", "websocket"].includes(params.get("transport") ?? "") ? params.get("transport") : "auto"
);
const GATEWAY = { baseUrl: new URL(".", location.href).href };

const ui = {
  joinView: $("join-view", HTMLElement),
  joinForm: $("join-form", HTMLFormElement),
  name: $("name", HTMLInputElement),
  room: $("room", HTMLInputElement),
  joinButton: $("join-button", HTMLButtonElement),
  joinError: $("join-error", HTMLElement),
  me: $("me", HTMLElement),
  meName: $("me-name", HTMLElement),
  meState: $("me-state", HTMLElement),
  leave: $("leave", HTMLButtonElement),
  roomView: $("room-view", HTMLElement),
  roomName: $("room-name", HTMLElement),
  members: $("members", HTMLUListElement),
  note: $("room-note", HTMLElement),
  tiles: $("tiles", HTMLElement),
};

/** @type {SignalClient | null} */
let client = null;
let room = "";
/** @type {MediaStream | null} */
let local = null;
/** @type {Map<string, Peer>} */
const peers = new Map();

if (params.get("room")) ui.room.value = params.get("room") ?? "";
ui.joinForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  join(ui.name.value.trim(), ui.room.value.trim());
});
ui.leave.addEventListener("click", () => leave());

/**
 * @param {string} name
 * @param {string} wanted
 */
async function join(name, wanted) {
  ui.joinError.textContent = "";
  if (!name || !wanted) {
    ui.joinError.textContent = "Pick a name and a room.";
    return;
  }
  ui.joinButton.disabled = true;
  try {
    local ??= await navigator.mediaDevices?.getUserMedia({ video: true, audio: true }).catch(() => null) ?? null;
    const c = await SignalClient.register(name, GATEWAY);
    watch(c);
    await c.connect({ transport: TRANSPORT });
    const members = await c.join(wanted);
    if (members.length > MAX_MEMBERS) {
      await c.close();
      throw new SignalError("ROOM_FULL", `${wanted} already has ${members.length - 1} people; this demo calls at most ${MAX_MEMBERS}`);
    }
    client = c;
    room = wanted;
    ui.joinView.hidden = true;
    ui.roomView.hidden = false;
    ui.me.hidden = false;
    ui.meName.textContent = c.username;
    ui.roomName.textContent = room;
    document.title = `${room} · signal-gateway`;
    showState("connected");
    addTile(c.username, local, true);
    for (const member of members) if (member !== c.username) call(member);
    render();
  } catch (err) {
    ui.joinError.textContent = `Could not join: ${err instanceof Error ? err.message : String(err)}`;
  } finally {
    ui.joinButton.disabled = false;
  }
}

/** @param {SignalClient} c */
function watch(c) {
  c.addEventListener("connected", () => showState("connected"));
  c.addEventListener("reconnecting", () => showState("reconnecting"));
  c.addEventListener("disconnected", ({ detail }) => {
    if (detail.reason !== "CLOSED") showState("disconnected", detail.message);
  });
  c.addEventListener("peer-joined", ({ detail }) => {
    if (detail.room === room) render(); // the newcomer calls us
  });
  c.addEventListener("peer-left", ({ detail }) => {
    if (detail.room !== room) return;
    hangUp(detail.user);
    render();
  });
  c.addEventListener("message", ({ detail }) => {
    if (detail.payload?.room === room) signal(detail.originator, detail.type, detail.payload).catch(report);
  });
}

/**
 * @param {string} state
 * @param {string} [why]
 */
function showState(state, why) {
  ui.meState.textContent = state === "connected" ? client?.transport ?? state : state;
  ui.meState.className = `badge ${state === "connected" ? client?.transport ?? "" : state === "reconnecting" ? "warn" : "bad"}`;
  ui.note.textContent = why ?? (state === "reconnecting" ? "Reconnecting to the gateway; calls go on." : "");
}

/**
 * A peer connection to `user`, with this page's media and a data channel
 * (so a page without a camera still connects).
 * @param {string} user
 */
function peerFor(user) {
  let peer = peers.get(user);
  if (peer) return peer;
  const pc = new RTCPeerConnection({ iceServers: client?.iceServers ?? [] });
  peer = { pc, tile: addTile(user, null, false), candidates: [] };
  peers.set(user, peer);
  for (const track of local?.getTracks() ?? []) pc.addTrack(track, /** @type {MediaStream} */ (local));
  pc.onicecandidate = ({ candidate }) => {
    if (candidate) send(user, "room-candidate", { room, candidate });
  };
  pc.ontrack = ({ streams: [stream] }) => {
    const video = peer?.tile.querySelector("video");
    if (video && stream && video.srcObject !== stream) video.srcObject = stream;
  };
  pc.onconnectionstatechange = () => {
    if (peer) peer.tile.dataset.state = pc.connectionState;
    render();
  };
  return peer;
}

/**
 * Offers a call to `user`, a member who was in the room before us.
 * @param {string} user
 */
async function call(user) {
  const { pc } = peerFor(user);
  pc.createDataChannel("room");
  await pc.setLocalDescription(await pc.createOffer());
  send(user, "room-offer", { room, description: pc.localDescription });
}

/**
 * A negotiation envelope from another member.
 * @param {string} from
 * @param {string} type
 * @param {{ description?: RTCSessionDescriptionInit, candidate?: RTCIceCandidateInit }} payload
 */
async function signal(from, type, payload) {
  if (type === "room-offer" && payload.description) {
    const peer = peerFor(from);
    await peer.pc.setRemoteDescription(payload.description);
    await peer.pc.setLocalDescription(await peer.pc.createAnswer());
    send(from, "room-answer", { room, description: peer.pc.localDescription });
    await flush(peer);
  } else if (type === "room-answer" && payload.description) {
    const peer = peers.get(from);
    if (!peer) return;
    await peer.pc.setRemoteDescription(payload.description);
    await flush(peer);
  } else if (type === "room-candidate" && payload.candidate) {
    const peer = peerFor(from);
    if (peer.pc.remoteDescription) await peer.pc.addIceCandidate(payload.candidate);
    else peer.candidates.push(payload.candidate);
  }
}

/** @param {Peer} peer */
async function flush(peer) {
  for (const candidate of peer.candidates.splice(0)) await peer.pc.addIceCandidate(candidate);
}

/** @param {string} user */
function hangUp(user) {
  const peer = peers.get(user);
  if (!peer) return;
  peers.delete(user);
  peer.pc.close();
  peer.tile.remove();
}

async function leave() {
  for (const user of [...peers.keys()]) hangUp(user);
  for (const track of local?.getTracks() ?? []) track.stop();
  local = null;
  const c = client;
  client = null;
  await c?.leave(room).catch(() => {});
  await c?.close();
  ui.tiles.replaceChildren();
  ui.members.replaceChildren();
  ui.roomView.hidden = true;
  ui.me.hidden = true;
  ui.joinView.hidden = false;
  document.title = "signal-gateway · room call";
}

/**
 * @param {string} target
 * @param {string} type
 * @param {unknown} payload
 */
function send(target, type, payload) {
  try {
    client?.send(target, type, payload);
  } catch (err) {
    report(err);
  }
}

/**
 * @param {string} user
 * @param {MediaStream | null} stream
 * @param {boolean} mine
 */
function addTile(user, stream, mine) {
  const tile = document.createElement("figure");
  tile.className = "tile";
  tile.dataset.user = user;
  tile.dataset.state = mine ? "connected" : "new";
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.muted = mine;
  if (stream) video.srcObject = stream;
  const caption = document.createElement("figcaption");
  caption.textContent = mine ? `${user} (you)` : user;
  tile.append(video, caption);
  ui.tiles.append(tile);
  return tile;
}

/** The member list: everyone in the room, and how this page's call to each is doing. */
function render() {
  if (!client) return;
  const items = client.members(room).map((member) => {
    const li = document.createElement("li");
    li.className = "member";
    li.dataset.user = member;
    const state = member === client?.username ? "you" : peers.get(member)?.pc.connectionState ?? "waiting";
    li.dataset.state = state;
    const name = document.createElement("span");
    name.className = "who-name";
    name.textContent = member;
    const status = document.createElement("span");
    status.className = "who-via";
    status.textContent = state;
    li.append(name, status);
    return li;
  });
  ui.members.replaceChildren(...items);
}

/** @param {unknown} err */
function report(err) {
  ui.note.textContent = err instanceof Error ? err.message : String(err);
}

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @param {new () => T} type
 * @returns {T}
 */
function $(id, type) {
  const element = document.getElementById(id);
  if (!(element instanceof type)) throw new Error(`#${id} is missing`);
  return element;
}
