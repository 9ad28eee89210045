// Builds the package from the one source the gateway serves at /client.js:
// dist/client.js is web/client.js as it is, and dist/client.d.ts is what
// TypeScript reads from its JSDoc (tsconfig.json).
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);
copyFileSync(join(here, "..", "web", "client.js"), join(dist, "client.js"));
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
execFileSync(process.execPath, [tsc, "-p", join(here, "tsconfig.json")], { stdio: "inherit" });
