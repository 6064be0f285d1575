// Copies the graph-drawing library the lock file names into the Python
// package (services/xenlab/web/static/vendor/), with a record of what was
// copied: the package, its version and lock-file integrity, and the sha256 of
// the file. `xenlab web` serves the copy; tests/unit/web/test_web_assets.py
// checks it against package-lock.json and this record.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "services", "xenlab", "web", "static", "vendor");
const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));
const assets = { cytoscape: "dist/cytoscape.min.js" };

mkdirSync(out, { recursive: true });
const record = {};
for (const [name, file] of Object.entries(assets)) {
  const entry = lock.packages[`node_modules/${name}`];
  const installed = JSON.parse(readFileSync(join(here, "node_modules", name, "package.json"), "utf8"));
  if (installed.version !== entry.version) {
    throw new Error(`${name} ${installed.version} is installed but the lock file says ${entry.version}: run npm ci`);
  }
  const target = join(out, `${name}.min.js`);
  copyFileSync(join(here, "node_modules", name, file), target);
  const sha256 = createHash("sha256").update(readFileSync(target)).digest("hex");
  record[name] = { version: entry.version, integrity: entry.integrity, file, sha256 };
  console.log(`${name} ${entry.version}: ${file} -> ${target}`);
}
writeFileSync(join(out, "VENDORED.json"), JSON.stringify(record, null, 2) + "\n");
