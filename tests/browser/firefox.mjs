// How the browser tests and scripts/browser-bench start Firefox: Debian's
// firefox-esr, headless, driven over WebDriver BiDi by puppeteer-core
// (Playwright's Firefox needs a patched build of its own, which this
// machine cannot download; puppeteer-core downloads no browser).
//
// The suite's scenarios are written once against the part of Playwright's
// page API they use; `launchFirefox()` returns a browser with that same
// shape (contexts, pages, evaluate, waitForFunction, routes and the
// getByLabel/getByRole/getByText locators the demo scenario uses), so a
// scenario runs unchanged in either browser.

import puppeteer from "puppeteer-core";

export const FIREFOX = process.env.FIREFOX_BIN ?? "/usr/bin/firefox-esr";

/**
 * Preferences for a headless test profile: a fake camera and microphone
 * without a prompt (as Chromium's fake-device flags), granted to every site
 * (without a granted permission, Firefox gathers ICE candidates only on the
 * default route's address, and a namespace with only loopback has none, so
 * it gathers nothing: "failed to find default addresses"), loopback
 * candidates allowed and unobfuscated, and the async clipboard without a
 * paste prompt (the /bench page's Copy JSON). WebTransport and HTTP/3 are
 * on by default in Firefox ESR.
 */
export const FIREFOX_PREFS = {
  "media.navigator.streams.fake": true,
  "media.navigator.permission.disabled": true,
  "permissions.default.camera": 1,
  "permissions.default.microphone": 1,
  "media.peerconnection.ice.loopback": true,
  "media.peerconnection.ice.obfuscate_host_addresses": false,
  "dom.events.testing.asyncClipboard": true,
};

/** How long an action or wait may take unless told otherwise (Playwright's default). */
const DEFAULT_TIMEOUT = 30_000;

export async function launchFirefox() {
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: FIREFOX,
    headless: true,
    extraPrefsFirefox: FIREFOX_PREFS,
    timeout: 30_000,
  });
  const version = (await browser.version()).replace(/^firefox\//i, "");
  return new FirefoxBrowser(browser, version);
}

class FirefoxBrowser {
  constructor(browser, version) {
    this.browser = browser;
    this.versionString = version;
  }

  version() {
    return this.versionString;
  }

  /** A user context (its own cookies and storage), as Playwright's newContext. */
  async newContext({ viewport } = {}) {
    return new FirefoxContext(await this.browser.createBrowserContext(), viewport);
  }

  /** A page in a context of its own, as Playwright's browser.newPage. */
  async newPage({ viewport } = {}) {
    return (await this.newContext({ viewport })).newPage();
  }

  close() {
    return this.browser.close();
  }
}

class FirefoxContext {
  constructor(context, viewport) {
    this.context = context;
    this.viewport = viewport;
    this.initScripts = [];
    this.timeout = DEFAULT_TIMEOUT;
  }

  setDefaultTimeout(ms) {
    this.timeout = ms;
  }

  /** Runs `fn` in every page of this context before the page's scripts. */
  addInitScript(fn) {
    this.initScripts.push(fn);
  }

  /**
   * Playwright grants browser permissions per context; FIREFOX_PREFS opens
   * the clipboard, camera and microphone to every site instead (WebDriver
   * BiDi cannot grant camera or microphone in Firefox).
   */
  async grantPermissions() {}

  async newPage() {
    const page = await this.context.newPage();
    page.setDefaultTimeout(this.timeout);
    if (this.viewport) await page.setViewport(this.viewport);
    for (const script of this.initScripts) await page.evaluateOnNewDocument(script);
    return new FirefoxPage(page, this);
  }

  close() {
    return this.context.close();
  }
}

class FirefoxPage {
  constructor(page, context) {
    this.page = page;
    this.ctx = context;
  }

  context() {
    return this.ctx;
  }

  on(event, listener) {
    this.page.on(event, listener);
  }

  goto(url) {
    return this.page.goto(url);
  }

  reload() {
    return this.page.reload();
  }

  evaluate(fn, arg) {
    return this.page.evaluate(fn, arg);
  }

  /** Playwright's argument order: (fn, arg, options). */
  waitForFunction(fn, arg, { timeout = this.ctx.timeout, polling = 50 } = {}) {
    return this.page.waitForFunction(fn, { timeout, polling }, arg);
  }

  addScriptTag(options) {
    return this.page.addScriptTag(options);
  }

  screenshot(options) {
    return this.page.screenshot(options);
  }

  close() {
    return this.page.close();
  }

  /**
   * Playwright's route for a glob ending in a path (`**\/v1/cert-hash`):
   * `handler(route)` may `fetch()` the real response and `fulfill({ json })`;
   * every other request goes on untouched.
   */
  async route(glob, handler) {
    const suffix = glob.replace(/^\*\*/, "");
    await this.page.setRequestInterception(true);
    this.page.on("request", (request) => {
      if (request.isInterceptResolutionHandled()) return;
      if (!new URL(request.url()).pathname.endsWith(suffix)) {
        request.continue().catch(() => {});
        return;
      }
      const route = {
        fetch: () => fetch(request.url(), { headers: { origin: new URL(this.page.url()).origin } }),
        fulfill: ({ json }) => request.respond({
          status: 200,
          contentType: "application/json",
          body: JSON.stringify(json),
        }),
      };
      Promise.resolve(handler(route)).catch(() => request.abort().catch(() => {}));
    });
  }

  locator(css) {
    return new Locator(this, [{ css }]);
  }

  getByLabel(text, options = {}) {
    return new Locator(this, [{ label: pattern(text), exact: Boolean(options.exact) }]);
  }

  getByRole(role, options = {}) {
    return new Locator(this, [{ role, name: options.name === undefined ? null : pattern(options.name) }]);
  }

  getByText(text, options = {}) {
    return new Locator(this, [{ text: pattern(text), exact: Boolean(options.exact) }]);
  }
}

/** A string or RegExp, in a form that crosses into the page. */
function pattern(value) {
  return value instanceof RegExp ? { source: value.source, flags: value.flags } : { string: value };
}

/**
 * A Playwright-like locator: a chain of steps resolved in the page on every
 * use, waiting (as Playwright does) for a visible match before acting.
 */
class Locator {
  constructor(page, steps) {
    this.page = page;
    this.steps = steps;
  }

  locator(css) {
    return new Locator(this.page, [...this.steps, { css }]);
  }

  getByText(text, options = {}) {
    return new Locator(this.page, [...this.steps, { text: pattern(text), exact: Boolean(options.exact) }]);
  }

  getByRole(role, options = {}) {
    return new Locator(this.page, [...this.steps, { role, name: options.name === undefined ? null : pattern(options.name) }]);
  }

  filter({ has }) {
    return new Locator(this.page, [...this.steps, { has: has.steps }]);
  }

  /** The first visible match, once there is one. */
  async element() {
    const handle = await this.page.page.waitForFunction(
      (steps) => globalThis.__locate(steps).find((el) => el.checkVisibility()) ?? null,
      { timeout: this.page.ctx.timeout, polling: 50 },
      await this.installed(),
    );
    return handle.asElement();
  }

  /** Puts the resolver into the page (once per document) and returns the steps. */
  async installed() {
    await this.page.page.evaluate(installLocate);
    return this.steps;
  }

  async waitFor() {
    (await this.element()).dispose();
  }

  /**
   * Real input, in the page's tab brought to the front first, as a person
   * would: in a background tab, Firefox throttles frames and an input
   * action waits for them (a click took up to 15 s).
   */
  async click() {
    const el = await this.element();
    await this.page.page.bringToFront();
    await el.click();
  }

  async check() {
    const el = await this.element();
    await this.page.page.bringToFront();
    if (!(await el.evaluate((e) => e.checked))) await el.click();
  }

  async isChecked() {
    const el = await this.element();
    return el.evaluate((e) => e.checked);
  }

  async fill(value) {
    const el = await this.element();
    await el.evaluate((e, v) => {
      e.focus();
      e.value = v;
      e.dispatchEvent(new Event("input", { bubbles: true }));
      e.dispatchEvent(new Event("change", { bubbles: true }));
    }, value);
  }

  async press(key) {
    const el = await this.element();
    await this.page.page.bringToFront();
    await el.focus();
    await el.press(key);
  }

  async textContent() {
    const el = await this.element();
    return el.evaluate((e) => e.textContent);
  }

  /** Matches now, visible or not, without waiting. */
  async count() {
    const steps = await this.installed();
    return this.page.page.evaluate((s) => globalThis.__locate(s).length, steps);
  }
}

/**
 * Defines `__locate(steps)` in the page: the elements a step chain selects.
 * Text is compared as Playwright does: whitespace collapsed; a string
 * matches case-insensitively as a substring unless `exact`.
 */
function installLocate() {
  if (globalThis.__locate) return;
  const norm = (s) => (s ?? "").replace(/\s+/g, " ").trim();
  const matches = (text, p, exact) => {
    text = norm(text);
    if (p.source !== undefined) return new RegExp(p.source, p.flags).test(text);
    return exact ? text === p.string : text.toLowerCase().includes(p.string.toLowerCase());
  };
  const descendants = (root) => [...root.querySelectorAll("*")];
  const labelOf = (el) => el.getAttribute("aria-label")
    ?? (el.labels?.length ? [...el.labels].map((l) => l.textContent).join(" ") : null);
  const nameOf = (el) => labelOf(el) || (el.tagName === "INPUT" ? el.value : "") || el.textContent;
  const ROLES = {
    button: 'button, input[type="submit"], input[type="button"], [role="button"]',
    radio: 'input[type="radio"], [role="radio"]',
    checkbox: 'input[type="checkbox"], [role="checkbox"]',
  };
  const step = (roots, s) => {
    if (s.css) return roots.flatMap((r) => [...r.querySelectorAll(s.css)]);
    if (s.has) return roots.filter((r) => locate(s.has, [r]).length > 0);
    if (s.role) {
      return roots.flatMap((r) => [...r.querySelectorAll(ROLES[s.role] ?? `[role="${s.role}"]`)])
        .filter((el) => s.name === null || matches(nameOf(el), s.name, false));
    }
    if (s.label) {
      return roots.flatMap(descendants).filter((el) => {
        const label = labelOf(el);
        return label !== null && el.tagName !== "LABEL" && matches(label, s.label, s.exact);
      });
    }
    // Text: the innermost elements whose text matches, the root included.
    return roots.flatMap((r) => (r === document ? descendants(r) : [r, ...descendants(r)])).filter((el) =>
      matches(el.textContent, s.text, s.exact)
      && ![...el.children].some((child) => matches(child.textContent, s.text, s.exact)));
  };
  const locate = (steps, roots = [document]) => steps.reduce(step, roots);
  globalThis.__locate = (steps) => locate(steps);
}
