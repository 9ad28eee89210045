// An app written against the package's types, checked with `tsc --strict`
// by scripts/client-test in a project that installed the packed tarball.
// It touches every export, so a declaration that drifts from the source
// fails the check.
import {
  CONNECT_DEFAULTS,
  ERROR_TYPES,
  SignalClient,
  SignalError,
  TRANSPORTS,
  type CloseDetail,
  type ConnectOptions,
  type Envelope,
  type IceConfig,
  type Welcome,
} from "signal-gateway-client";

const baseUrl = "http://127.0.0.1:8000";

export async function call(name: string, peer: string): Promise<void> {
  const options: ConnectOptions = { transport: "auto", timeout: CONNECT_DEFAULTS.timeout, reconnect: { maxDelay: 20_000 } };
  let client: SignalClient;
  try {
    client = await SignalClient.register(name, { baseUrl });
  } catch (err) {
    if (err instanceof SignalError && err.code === "TAKEN") throw new Error(`${name} is taken`);
    throw err;
  }
  client.addEventListener("open", (ev) => {
    const welcome = (ev as CustomEvent<Welcome & { reconnected: boolean }>).detail;
    console.log(welcome.username, welcome.transport, welcome.connection_id, welcome.reconnected);
  });
  client.addEventListener("message", (ev) => {
    const envelope = (ev as CustomEvent<Envelope>).detail;
    if (envelope.originator === "" && ERROR_TYPES.includes(envelope.type)) console.warn(envelope.payload);
  });
  client.addEventListener("close", (ev) => {
    const close = (ev as CustomEvent<CloseDetail>).detail;
    console.log(close.code, close.reason, close.willReconnect);
  });
  client.addEventListener("iceservers", (ev) => {
    const ice = (ev as CustomEvent<IceConfig>).detail;
    console.log(ice.iceServers.length, ice.ttl);
  });
  const welcome: Welcome = await client.connect(options);
  const servers: RTCIceServer[] = client.iceServers;
  console.log(welcome.max_envelope_bytes, servers, TRANSPORTS, SignalClient.webTransportSupported);
  console.log(client.username, client.token, client.baseUrl, client.state, client.transport, client.connectionId);
  console.log(client.timing, client.fallbackReason?.code);
  client.send(peer, "video-offer", { type: "offer", sdp: "v=0" });
  console.log(await client.users());
  await client.close();

  const again = await SignalClient.fromToken(client.token, { baseUrl });
  console.log(again.username, await SignalClient.users({ baseUrl }));
  const signedIn = await SignalClient.signIn({ baseUrl, getToken: async () => "a JWT from your backend" });
  await signedIn.close();
}
