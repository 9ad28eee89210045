// How the browser tests and scripts/browser-bench start Chromium: Debian's
// package (playwright-core downloads no browser), headless.

import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

/**
 * Chromium as the feasibility notes ran it, plus WebRTC helpers: fake
 * camera/microphone (so getUserMedia works headless and the demo shows
 * video) and loopback ICE candidates (for machines with only loopback).
 * No --disable-quic: WebTransport needs QUIC.
 */
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
  "--allow-loopback-in-peer-connection",
];

export function launchChromium() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
}
