// An app written against the package's types, checked with `tsc --strict`
// by scripts/client-test in a project that installed the packed tarball.
// It touches every export, and every event by name without a cast, so a
// declaration that drifts from the source fails the check.
import {
  CONNECT_DEFAULTS,
  ERROR_TYPES,
  SignalClient,
  SignalError,
  TRANSPORTS,
  type CloseDetail,
  type ConnectOptions,
  type ConnectionState,
  type Envelope,
  type IceConfig,
  type PeerLeftDetail,
  type RetryContext,
  type RoomEnvelope,
  type SignalClientEventMap,
  type Welcome,
} from "signal-gateway-client";

const baseUrl = "http://127.0.0.1:8000";

/** livekit-client's delays, then 7 s; `null` stops after ten attempts. */
function nextRetryDelayMs({ attempt, elapsedMs, code, reason, error }: RetryContext): number | null {
  console.log(`retry ${attempt} after ${code} ${reason}, ${elapsedMs} ms down`, error?.code);
  return attempt > 10 ? null : ([0, 300, 1_200, 2_700, 4_800][attempt - 1] ?? 7_000);
}

export async function call(name: string, peer: string): Promise<void> {
  const options: ConnectOptions = {
    transport: "auto",
    timeout: CONNECT_DEFAULTS.timeout,
    reconnect: { nextRetryDelayMs },
    resume: CONNECT_DEFAULTS.resume,
    maxQueued: 64,
    closeOnPageHide: true,
  };
  let client: SignalClient;
  try {
    client = await SignalClient.register(name, { baseUrl });
  } catch (err) {
    if (err instanceof SignalError && err.code === "TAKEN") throw new Error(`${name} is taken`);
    throw err;
  }
  client.addEventListener("connecting", (ev) => console.log("connecting", ev.detail.code, ev.detail.reason));
  client.addEventListener("connected", (ev) => {
    const welcome: Welcome & { reconnected: boolean } = ev.detail;
    console.log(welcome.username, welcome.transport, welcome.connection_id, welcome.reconnected, welcome.session);
  });
  client.addEventListener("reconnecting", ({ detail }) => {
    console.log(`reconnecting in ${detail.delay} ms (attempt ${detail.attempt}) after ${detail.code} ${detail.reason}`, detail.error?.message);
  });
  client.addEventListener("disconnected", ({ detail: { code, reason, message } }) => console.log(code, reason, message));
  client.addEventListener("resumed", ({ detail }) => {
    if (!detail.resumed) console.warn("some envelopes may be missing; ask the peers to start over");
    console.log(`${detail.replayed} envelopes replayed`);
  });
  client.addEventListener("message", (ev) => {
    const envelope: Envelope = ev.detail;
    if (envelope.originator === "" && ERROR_TYPES.includes(envelope.type)) console.warn(envelope.payload);
    console.log(envelope.seq, envelope.room);
  });
  client.addEventListener("close", (ev) => {
    const close: CloseDetail = ev.detail;
    console.log(close.code, close.reason, close.message, close.reconnect, close.willReconnect);
  });
  client.addEventListener("iceservers", (ev) => {
    const ice: IceConfig = ev.detail;
    console.log(ice.iceServers.length, ice.ttl);
  });
  client.addEventListener("identity", ({ detail }) => console.log(detail.username, detail.token));
  client.addEventListener("error", ({ detail }) => console.error(detail.code, detail.message));
  client.addEventListener("peer-joined", ({ detail }) => console.log(`${detail.user} joined ${detail.room}`));
  const onLeft = ({ detail }: SignalClientEventMap["peer-left"]) => {
    const left: PeerLeftDetail = detail;
    console.log(`${left.user} left ${left.room}: ${left.reason}`);
  };
  client.addEventListener("peer-left", onLeft);
  client.addEventListener("room-message", ({ detail }) => {
    const envelope: RoomEnvelope = detail;
    console.log(`${envelope.originator} to ${envelope.room}: ${envelope.type}`, envelope.payload);
  });

  const welcome: Welcome = await client.connect(options);
  const state: ConnectionState = client.state;
  const servers: RTCIceServer[] = client.iceServers;
  console.log(state, welcome.max_envelope_bytes, welcome.resumed, welcome.replayed, servers, TRANSPORTS, SignalClient.webTransportSupported);
  console.log(client.username, client.token, client.baseUrl, client.transport, client.connectionId);
  console.log(client.timing, client.fallbackReason?.code, client.resumeState.session, client.resumeState.seq);
  client.send(peer, "video-offer", { type: "offer", sdp: "v=0" });

  const members: string[] = await client.join("standup");
  console.log(members, client.members("standup"), client.rooms);
  client.sendToRoom("standup", "chat", { text: "hello" });
  await client.leave("standup");
  client.removeEventListener("peer-left", onLeft);
  console.log(await client.users());
  await client.close();

  const again = await SignalClient.fromToken(client.token, { baseUrl });
  console.log(again.username, await SignalClient.users({ baseUrl }));
  const signedIn = await SignalClient.signIn({
    baseUrl,
    getToken: async () => {
      const response = await fetch("/my-backend/token");
      if (response.status === 401) throw new Error("signed out"); // stops the reconnects
      return response.text();
    },
  });
  await signedIn.connect({ reconnect: { initialDelay: 500, maxDelay: 20_000, factor: 2, maxAttempts: 50 } });
  await signedIn.close();
}
