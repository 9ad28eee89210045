// @ts-check
/**
 * @file The demo app's calls, without the page: one WebRTC call at a time
 * with another demo page, signalled through the gateway. It touches no DOM:
 * the page (app.js) gives it a way to send envelopes and hands it the ones
 * it receives, and it tells the page what to show through {@link PhoneEvents}.
 *
 * Signalling messages between two demo pages:
 * - `hello`        {transport}: sent before an offer and with an answer, so
 *                  each side can show the other's transport (and the caller
 *                  learns at once when the callee is not online);
 * - `video-offer`, `video-answer` (RTCSessionDescription) and
 *   `ice-candidate` (RTCIceCandidate, or null at the end), as in the seed;
 * - `hang-up`, `call-decline` {reason}.
 */

/** How long a call rings before the caller gives up and the callee stops ringing. */
const RING_TIMEOUT_MS = 30_000;
/**
 * Gateway errors about the last call's peer that arrive this soon after it
 * ended are about envelopes of that call still on their way (its candidates
 * to someone who turned out to be offline), not news.
 */
const LATE_ERROR_MS = 5_000;

/**
 * @typedef {import("./client.js").Envelope} Envelope
 *
 * @typedef {"idle" | "calling" | "ringing" | "connecting" | "connected"} CallState
 *
 * Why a call ended: what this page did (`hung-up`, `declined`, `no-answer`:
 * it gave up ringing, `missed`: the callee's ringing stopped), what the peer
 * did (`peer-…`), or what went wrong (`unreachable`: ICE failed, or found
 * no candidate at all, e.g. relay only and the TURN server refused the
 * credentials; `failed`: an error).
 * @typedef {"hung-up" | "declined" | "missed" | "no-answer" | "peer-hung-up" | "peer-declined"
 *   | "peer-busy" | "peer-left" | "peer-offline" | "unreachable" | "failed"} EndReason
 *
 * @typedef {object} PhoneOptions
 * @property {(target: string, type: string, payload: unknown) => void} send
 *   hands an envelope to the gateway (reporting any failure itself)
 * @property {() => string | null} transport this page's signalling
 *   transport, which `hello` tells the peer
 * @property {RTCIceServer[]} [iceServers] default: none, which works on one
 *   machine or a LAN
 * @property {RTCIceTransportPolicy} [iceTransportPolicy] default `"all"`
 * @property {number} [ringTimeout] milliseconds; default 30 s
 *
 * What the page shows, called by the {@link Phone}:
 * @typedef {object} PhoneEvents
 * @property {(state: Exclude<CallState, "idle">, previous: CallState) => void} state
 *   the call moved on (`connected` comes again after an interruption); the
 *   peer is {@link Phone#peer}; the end is `ended`, not `idle`
 * @property {() => void} interrupted the browsers lost each other; ICE may
 *   bring them back (`state("connected")`) or give up (`ended`)
 * @property {(reason: EndReason, peer: string, error?: unknown) => void} ended
 *   the call is over and {@link Phone#state} is `idle` again; with
 *   `unreachable`, `error` is the last ICE server error, if any (e.g. a
 *   TURN server's `401 Unauthorized`)
 * @property {(stream: MediaStream | null) => void} localMedia this call's
 *   camera and microphone, or `null` when there are none
 * @property {(stream: MediaStream, track: MediaStreamTrack) => void} remoteTrack
 *   a track from the peer, and the stream that holds all of them
 * @property {(transport: string) => void} peerTransport the peer's
 *   signalling transport, once known (and again when it may have changed)
 * @property {() => void} chatOpen the data channel is open
 * @property {() => void} chatClosed the data channel closed before the call ended
 * @property {(peer: string, text: string) => void} chatMessage
 * @property {(type: string, payload: { message?: string }) => void} gatewayError
 *   an error envelope from the gateway that is not about this call
 *
 * @typedef {object} Call
 * @property {CallState} state
 * @property {string | null} peer
 * @property {"caller" | "callee" | null} role
 * @property {RTCPeerConnection | null} pc
 * @property {RTCDataChannel | null} channel
 * @property {RTCSessionDescriptionInit | null} offer the caller's, until accepted
 * @property {RTCIceCandidateInit[]} candidates received before the offer/answer was in place
 * @property {MediaStream | null} local
 * @property {MediaStream | null} remote
 * @property {ReturnType<typeof setTimeout> | undefined} timer rings until then
 */

/** @returns {Call} */
function idleCall() {
  return {
    state: "idle",
    peer: null,
    role: null,
    pc: null,
    channel: null,
    offer: null,
    candidates: [],
    local: null,
    remote: null,
    timer: undefined,
  };
}

/**
 * The one call a page can be in: dial, ring, accept, chat, hang up. A call
 * that ended is replaced by a fresh one, so anything still pending for the
 * old one (an answer, a candidate, a camera prompt) finds it gone and stops.
 */
export class Phone {
  /**
   * ICE servers for peer connections, read for each new call: replace the
   * array to change them (e.g. TURN credentials that expire).
   * @type {RTCIceServer[]}
   */
  iceServers;
  /**
   * `"relay"` lets media flow only through a TURN server, so a call
   * connects only if the relay works (to check a TURN set-up); `"all"`
   * lets ICE pick any route. Read for each new call.
   * @type {RTCIceTransportPolicy}
   */
  iceTransportPolicy;
  /** @type {PhoneOptions["send"]} */ #send;
  /** @type {PhoneOptions["transport"]} */ #transport;
  /** @type {number} */ #ringTimeout;
  /** @type {PhoneEvents} */ #events;
  #call = idleCall();
  /**
   * Who the last call was with, and when it ended, to ignore late errors about it.
   * @type {{ peer: string | null, at: number }}
   */
  #lastEnded = { peer: null, at: 0 };
  /** @type {Map<string, string>} each peer's transport, from its `hello` */
  #peerTransports = new Map();

  /**
   * @param {PhoneOptions} options
   * @param {PhoneEvents} events
   */
  constructor(options, events) {
    this.iceServers = options.iceServers ?? [];
    this.iceTransportPolicy = options.iceTransportPolicy ?? "all";
    this.#send = options.send;
    this.#transport = options.transport;
    this.#ringTimeout = options.ringTimeout ?? RING_TIMEOUT_MS;
    this.#events = events;
  }

  /** @returns {CallState} */
  get state() {
    return this.#call.state;
  }

  /** Who the call is with; `null` when idle. */
  get peer() {
    return this.#call.peer;
  }

  /**
   * The kinds of the ICE candidates the call's media uses right now, from
   * the selected candidate pair: `relay` on a side means through a TURN
   * server. `null` when not connected (or the browser does not say).
   * @returns {Promise<{ local: string, remote: string } | null>}
   */
  async route() {
    const pc = this.#call.pc;
    return pc ? selectedCandidateTypes(pc) : null;
  }

  /** The peer's signalling transport, if its `hello` said. */
  get peerTransport() {
    const peer = this.#call.peer;
    return (peer !== null && this.#peerTransports.get(peer)) || null;
  }

  /**
   * Calls `target`, unless already in a call.
   * @param {string} target
   */
  async dial(target) {
    if (this.#call.state !== "idle") return;
    /** @type {Call} */
    const call = { ...idleCall(), state: "calling", peer: target, role: "caller" };
    this.#call = call;
    this.#events.state("calling", "idle");
    this.#hello(target); // before asking for the camera: an offline callee shows up at once
    try {
      const local = await getMedia();
      if (this.#call !== call) {
        stopMedia(local); // ended meanwhile
        return;
      }
      call.local = local;
      this.#events.localMedia(local);
      const pc = this.#newPeerConnection(call, target);
      const kinds = new Set(local?.getTracks().map((t) => t.kind));
      if (local) for (const track of local.getTracks()) pc.addTrack(track, local);
      // Receive their video and audio even when we have none to send.
      for (const kind of ["audio", "video"]) {
        if (!kinds.has(kind)) pc.addTransceiver(kind, { direction: "recvonly" });
      }
      this.#useChannel(call, target, pc.createDataChannel("chat"));
      await pc.setLocalDescription(await pc.createOffer());
      this.#send(target, "video-offer", pc.localDescription);
      call.timer = setTimeout(() => {
        if (this.#call === call && call.state === "calling") this.#end("no-answer", { notify: true });
      }, this.#ringTimeout);
    } catch (err) {
      this.#fail(call, err);
    }
  }

  /** Accepts the call that is ringing. */
  async accept() {
    const call = this.#call;
    const { peer, offer } = call;
    if (call.state !== "ringing" || peer === null || offer === null) return;
    clearTimeout(call.timer);
    call.state = "connecting";
    this.#events.state("connecting", "ringing");
    try {
      const local = await getMedia();
      if (this.#call !== call) {
        stopMedia(local); // ended meanwhile
        return;
      }
      call.local = local;
      this.#events.localMedia(local);
      const pc = this.#newPeerConnection(call, peer);
      pc.addEventListener("datachannel", (ev) => this.#useChannel(call, peer, ev.channel));
      await pc.setRemoteDescription(offer);
      // addTrack re-uses the transceivers the offer created, so no renegotiation.
      if (local) for (const track of local.getTracks()) pc.addTrack(track, local);
      await flushCandidates(call, pc);
      await pc.setLocalDescription(await pc.createAnswer());
      this.#hello(peer);
      this.#send(peer, "video-answer", pc.localDescription);
      this.#showPeerTransport();
    } catch (err) {
      this.#fail(call, err);
    }
  }

  /** Declines the call that is ringing. */
  decline() {
    this.#decline("declined");
  }

  /** Ends the call and tells the peer. */
  hangUp() {
    this.#end("hung-up", { notify: true });
  }

  /**
   * Tells the peer the call is over without ending it here: for a page that
   * is going away, where only the message matters.
   */
  hangUpOnUnload() {
    const { peer, state } = this.#call;
    if (peer !== null && state !== "idle") this.#send(peer, "hang-up", null);
  }

  /**
   * The page's connection to the gateway is back, maybe over another
   * transport: tell the peer of a call under way.
   */
  reconnected() {
    const { peer, state } = this.#call;
    if (peer === null || state === "idle" || state === "ringing") return;
    this.#hello(peer);
    this.#showPeerTransport();
  }

  /**
   * Sends a chat message over the data channel.
   * @param {string} text
   * @returns {boolean} false when the chat is not open
   */
  say(text) {
    const channel = this.#call.channel;
    if (channel?.readyState !== "open") return false;
    channel.send(JSON.stringify({ text }));
    return true;
  }

  /**
   * Turns this call's microphone or camera off, or back on.
   * @param {"audio" | "video"} kind
   * @returns {boolean | null} whether it is on now; `null` when there is none
   */
  toggle(kind) {
    const local = this.#call.local;
    const tracks = kind === "audio" ? local?.getAudioTracks() : local?.getVideoTracks();
    if (!tracks?.length) return null;
    const on = !tracks[0].enabled;
    for (const track of tracks) track.enabled = on;
    return on;
  }

  /**
   * Takes an envelope from the gateway: signalling from other demo pages,
   * and the gateway's error envelopes. Other types are for other apps.
   * @param {Envelope} envelope
   */
  handle({ type, originator, payload }) {
    if (originator === "") {
      this.#onGatewayError(type, payload ?? {});
      return;
    }
    const call = this.#call;
    const fromPeer = originator === call.peer;
    switch (type) {
      case "hello":
        if (typeof payload?.transport === "string") this.#peerTransports.set(originator, payload.transport);
        else this.#peerTransports.delete(originator);
        if (fromPeer) this.#showPeerTransport();
        break;
      case "video-offer":
        if (payload) this.#onOffer(originator, payload); // an offer without a description calls nobody
        break;
      case "video-answer":
        if (fromPeer && call.role === "caller") this.#onAnswer(call, payload).catch((err) => this.#fail(call, err));
        break;
      case "ice-candidate":
        if (fromPeer && payload) this.#addCandidate(call, payload).catch(() => {}); // a stale candidate is harmless
        break;
      case "hang-up":
        if (fromPeer) this.#end(call.state === "ringing" ? "missed" : "peer-hung-up");
        break;
      case "call-decline":
        if (fromPeer) this.#end(payload?.reason === "busy" ? "peer-busy" : "peer-declined");
        break;
      default:
        break; // unknown types are for other apps
    }
  }

  // ---- internals ----

  /**
   * @param {string} type
   * @param {{ message?: string, target?: string }} payload
   */
  #onGatewayError(type, payload) {
    const call = this.#call;
    const target = payload.target;
    if (target && target === this.#lastEnded.peer && target !== call.peer
      && Date.now() - this.#lastEnded.at < LATE_ERROR_MS) return;
    if (type === "TARGET_NOT_FOUND" && target && target === call.peer) {
      this.#end(call.state === "connected" ? "peer-left" : "peer-offline");
    } else {
      this.#events.gatewayError(type, payload);
    }
  }

  /**
   * @param {string} from
   * @param {RTCSessionDescriptionInit} offer
   */
  #onOffer(from, offer) {
    if (this.#call.state !== "idle") {
      if (from !== this.#call.peer) this.#send(from, "call-decline", { reason: "busy" });
      return;
    }
    /** @type {Call} */
    const call = { ...idleCall(), state: "ringing", peer: from, role: "callee", offer };
    this.#call = call;
    this.#events.state("ringing", "idle");
    call.timer = setTimeout(() => {
      if (this.#call === call && call.state === "ringing") this.#decline("timeout");
    }, this.#ringTimeout);
  }

  /**
   * @param {Call} call
   * @param {RTCSessionDescriptionInit} answer
   */
  async #onAnswer(call, answer) {
    const pc = call.pc;
    if (!pc) return; // our offer is not out yet, so this answers nothing
    clearTimeout(call.timer);
    const previous = call.state;
    call.state = "connecting";
    this.#events.state("connecting", previous);
    await pc.setRemoteDescription(answer);
    await flushCandidates(call, pc);
    this.#showPeerTransport();
  }

  /**
   * @param {Call} call
   * @param {RTCIceCandidateInit} candidate
   */
  async #addCandidate(call, candidate) {
    if (call.pc?.remoteDescription) await call.pc.addIceCandidate(candidate);
    else call.candidates.push(candidate); // before the offer/answer is in place
  }

  /** @param {"declined" | "timeout"} reason what the caller is told */
  #decline(reason) {
    const { peer, state } = this.#call;
    if (state !== "ringing" || peer === null) return;
    this.#send(peer, "call-decline", { reason });
    this.#end(reason === "timeout" ? "missed" : "declined");
  }

  /**
   * @param {Call} call
   * @param {string} peer
   */
  #newPeerConnection(call, peer) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: this.iceTransportPolicy });
    call.pc = pc;
    let gathered = 0;
    /** @type {Error | undefined} */
    let iceError;
    pc.addEventListener("icecandidate", (ev) => {
      if (ev.candidate) gathered += 1;
      this.#send(peer, "ice-candidate", ev.candidate);
    });
    pc.addEventListener("icecandidateerror", (ev) => {
      const { url, errorCode, errorText } = /** @type {RTCPeerConnectionIceErrorEvent} */ (ev);
      iceError = new Error(`${url}: ${errorCode} ${errorText.replace(/\.$/, "")}`.trim());
    });
    pc.addEventListener("icegatheringstatechange", () => {
      // Without a single candidate of ours no route can ever be found (relay
      // only, and the TURN server refused us or is unreachable): ICE would
      // wait forever, so end the call now and say why.
      if (this.#call.pc === pc && pc.iceGatheringState === "complete" && gathered === 0) {
        this.#end("unreachable", { notify: true, error: iceError });
      }
    });
    pc.addEventListener("track", (ev) => {
      // Tracks that come without a stream join the call's one remote stream.
      const stream = ev.streams[0] ?? call.remote ?? new MediaStream();
      if (!ev.streams[0]) stream.addTrack(ev.track);
      call.remote = stream;
      this.#events.remoteTrack(stream, ev.track);
    });
    pc.addEventListener("connectionstatechange", () => {
      if (this.#call.pc !== pc) return;
      if (pc.connectionState === "connected") {
        clearTimeout(call.timer);
        const previous = call.state;
        call.state = "connected";
        this.#events.state("connected", previous);
      } else if (pc.connectionState === "disconnected") {
        this.#events.interrupted();
      } else if (pc.connectionState === "failed") {
        this.#end("unreachable", { notify: true });
      }
    });
    return pc;
  }

  /**
   * @param {Call} call
   * @param {string} peer
   * @param {RTCDataChannel} channel
   */
  #useChannel(call, peer, channel) {
    call.channel = channel;
    channel.addEventListener("open", () => {
      if (this.#call.channel === channel) this.#events.chatOpen();
    });
    channel.addEventListener("close", () => {
      if (this.#call.channel === channel) this.#events.chatClosed();
    });
    channel.addEventListener("message", (ev) => {
      let text = "";
      try {
        text = String(JSON.parse(ev.data).text ?? "");
      } catch {
        text = String(ev.data);
      }
      if (text) this.#events.chatMessage(peer, text);
    });
  }

  /** @param {string} target */
  #hello(target) {
    this.#send(target, "hello", { transport: this.#transport() });
  }

  #showPeerTransport() {
    const transport = this.peerTransport;
    if (transport) this.#events.peerTransport(transport);
  }

  /**
   * Ends `call` if it is still the current one (a late failure of an older
   * call must not end a newer one).
   * @param {Call} call
   * @param {unknown} error
   */
  #fail(call, error) {
    if (this.#call === call) this.#end("failed", { notify: true, error });
  }

  /**
   * @param {EndReason} reason
   * @param {{ notify?: boolean, error?: unknown }} [options] `notify`: send the peer `hang-up`
   */
  #end(reason, { notify = false, error } = {}) {
    const call = this.#call;
    if (call.state === "idle" || call.peer === null) return;
    if (notify) this.#send(call.peer, "hang-up", null);
    clearTimeout(call.timer);
    call.channel?.close();
    call.pc?.close();
    stopMedia(call.local);
    this.#lastEnded = { peer: call.peer, at: Date.now() };
    this.#call = idleCall();
    this.#events.ended(reason, call.peer, error);
  }
}

// ---- media ----

/**
 * Camera and microphone if there are any; audio only, or nothing, otherwise.
 * @returns {Promise<MediaStream | null>}
 */
async function getMedia() {
  if (!navigator.mediaDevices?.getUserMedia) return null;
  for (const constraints of [{ video: true, audio: true }, { audio: true }, { video: true }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch (err) {
      if (err instanceof DOMException && err.name === "NotAllowedError") break; // the person said no: don't ask again
    }
  }
  return null;
}

/** @param {MediaStream | null} stream */
function stopMedia(stream) {
  for (const track of stream?.getTracks() ?? []) track.stop();
}

/**
 * The candidate types of the selected candidate pair (Chromium names it in
 * the transport's stats; Firefox marks the pair `selected`).
 * @param {RTCPeerConnection} pc
 * @returns {Promise<{ local: string, remote: string } | null>}
 */
async function selectedCandidateTypes(pc) {
  const stats = await pc.getStats();
  /** @type {any} */
  let pair = null;
  stats.forEach((report) => {
    if (report.type === "transport" && report.selectedCandidatePairId) pair ??= stats.get(report.selectedCandidatePairId);
  });
  stats.forEach((report) => {
    if (report.type === "candidate-pair" && report.selected) pair ??= report;
  });
  const local = pair && stats.get(pair.localCandidateId)?.candidateType;
  const remote = pair && stats.get(pair.remoteCandidateId)?.candidateType;
  return local && remote ? { local, remote } : null;
}

/**
 * Adds the candidates that came before the offer/answer was in place.
 * @param {Call} call
 * @param {RTCPeerConnection} pc
 */
async function flushCandidates(call, pc) {
  const queued = call.candidates;
  call.candidates = [];
  for (const candidate of queued) await pc.addIceCandidate(candidate).catch(() => {});
}
