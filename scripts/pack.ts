/**
 * Packs the publishable packages into npm tarballs under build/pack/, from their built dist/.
 * Run after `bun run build`; `bun run pack` does both.
 *
 * Why not `npm pack`/`changeset publish` in the package folders: the workspace manifests point the
 * "bun" export condition at src/*.ts (so the monorepo runs without a build) and depend on each other
 * with `workspace:*`, which npm would ship verbatim. Each package is staged with a published manifest:
 * - exports/main/types only at dist/ (ESM .js + .d.ts), no "bun" condition, no src/ in "files";
 * - `workspace:*` replaced by the exact version of that workspace package (as bun and pnpm do);
 * - no scripts or devDependencies;
 * - the `mcudpt` CLI is one bundle (citty, prom-client and the @mcudpt packages inlined), so it
 *   ships without dependencies: `npx mcudpt` downloads one small tarball.
 * Then `npm pack` (offline) packs the stage. Prints the tarball paths, one per line.
 */
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";

const ROOT = join(import.meta.dirname, "..");
const OUT = join(ROOT, "build", "pack");
const STAGE = join(OUT, "stage");

interface Manifest {
  name: string;
  version: string;
  private?: boolean;
  files?: string[];
  exports?: unknown;
  bin?: Record<string, string>;
  dependencies?: Record<string, string>;
  [key: string]: unknown;
}

/** Workspace package folders, publishable ones in dependency order (protocol first, the CLI last). */
export function workspaceFolders(): string[] {
  const folders = ["packages", "apps"].flatMap((group) =>
    readdirSync(join(ROOT, group))
      .map((name) => join(ROOT, group, name))
      .filter((dir) => existsSync(join(dir, "package.json"))),
  );
  const order = ["@mcudpt/protocol", "@mcudpt/core", "@mcudpt/transport-bun", "@mcudpt/transport-node", "mcudpt"];
  const rank = (dir: string) => {
    const index = order.indexOf(readManifest(dir).name);
    return index < 0 ? order.length : index;
  };
  return folders.filter((dir) => !readManifest(dir).private).sort((a, b) => rank(a) - rank(b));
}

function readManifest(dir: string): Manifest {
  return JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
}

/** Drops the "bun" → src/*.ts condition from an exports map, recursively. */
function publishedExports(value: unknown): unknown {
  if (value === null || typeof value !== "object") return value;
  return Object.fromEntries(
    Object.entries(value as Record<string, unknown>)
      .filter(([key, target]) => !(key === "bun" && typeof target === "string" && target.includes("/src/")))
      .map(([key, target]) => [key, publishedExports(target)]),
  );
}

export function publishedManifest(manifest: Manifest, versions: Map<string, string>): Manifest {
  const { scripts: _s, devDependencies: _d, ...out } = manifest;
  out.files = (manifest.files ?? []).filter((entry) => entry !== "src" && !entry.startsWith("src/"));
  if (manifest.exports !== undefined) out.exports = publishedExports(manifest.exports);
  if (manifest.name === "mcudpt") {
    delete out.dependencies; // everything is bundled into dist/
    out.exports = { "./package.json": "./package.json" };
  } else if (manifest.dependencies) {
    out.dependencies = Object.fromEntries(
      Object.entries(manifest.dependencies).map(([name, range]) => {
        if (!range.startsWith("workspace:")) return [name, range];
        const version = versions.get(name);
        if (!version) throw new Error(`${manifest.name}: ${name} is ${range} but not a workspace package`);
        return [name, version];
      }),
    );
  }
  const text = JSON.stringify(out);
  if (text.includes("workspace:")) throw new Error(`${manifest.name}: "workspace:" left in the published manifest`);
  if (/"\.\/src\//.test(text)) throw new Error(`${manifest.name}: the published manifest points into src/`);
  return out;
}

export function pack(): string[] {
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(STAGE, { recursive: true });
  const folders = workspaceFolders();
  const versions = new Map(folders.map((dir) => [readManifest(dir).name, readManifest(dir).version]));
  const tarballs: string[] = [];
  for (const dir of folders) {
    const manifest = readManifest(dir);
    const published = publishedManifest(manifest, versions);
    const stage = join(STAGE, manifest.name.replace("@", "").replace("/", "-"));
    mkdirSync(stage, { recursive: true });
    for (const entry of published.files ?? []) {
      if (!existsSync(join(dir, entry)))
        throw new Error(`${manifest.name}: ${entry} is missing (run bun run build first)`);
      cpSync(join(dir, entry), join(stage, entry), { recursive: true });
    }
    for (const doc of ["README.md", "CHANGELOG.md", "LICENSE"]) {
      if (existsSync(join(dir, doc))) cpSync(join(dir, doc), join(stage, doc));
    }
    // The CLI's page on the registry is the project README.
    if (manifest.name === "mcudpt" && !existsSync(join(dir, "README.md")))
      cpSync(join(ROOT, "README.md"), join(stage, "README.md"));
    if (existsSync(join(ROOT, "LICENSE")) && !existsSync(join(stage, "LICENSE")))
      cpSync(join(ROOT, "LICENSE"), join(stage, "LICENSE"));
    writeFileSync(join(stage, "package.json"), `${JSON.stringify(published, null, 2)}\n`);
    const output = execFileSync("npm", ["pack", "--json", "--offline", "--pack-destination", OUT], {
      cwd: stage,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
    tarballs.push(join(OUT, (JSON.parse(output) as Array<{ filename: string }>)[0].filename));
  }
  return tarballs;
}

/** The installed folder of package `name` as Node would find it from `from` (node_modules upwards). */
function installedPackage(name: string, from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, "node_modules", name);
    if (existsSync(join(candidate, "package.json"))) return realpathSync(candidate);
    if (dirname(dir) === dir) throw new Error(`${name} is not installed (run bun install first)`);
  }
}

/**
 * The registry packages the published libraries depend on (websocket-driver and its own
 * dependencies, transitively), packed from node_modules as installed: with pack()'s tarballs they
 * install offline into an empty folder, as the release test does. Not published by release.ts
 * (they are already on the registry). Call after pack(), which empties build/pack/.
 */
export function packDependencies(): string[] {
  const out = join(OUT, "deps");
  mkdirSync(out, { recursive: true });
  const seen = new Set<string>();
  const queue = workspaceFolders()
    .filter((dir) => readManifest(dir).name !== "mcudpt")
    .flatMap((dir) =>
      Object.entries(readManifest(dir).dependencies ?? {})
        .filter(([, range]) => !range.startsWith("workspace:"))
        .map(([name]) => ({ name, from: dir })),
    );
  const tarballs: string[] = [];
  while (queue.length > 0) {
    const { name, from } = queue.shift() as { name: string; from: string };
    const dir = installedPackage(name, from);
    if (seen.has(dir)) continue;
    seen.add(dir);
    const output = execFileSync(
      "npm",
      ["pack", dir, "--json", "--offline", "--ignore-scripts", "--pack-destination", out],
      { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
    );
    tarballs.push(join(out, (JSON.parse(output) as Array<{ filename: string }>)[0].filename));
    for (const dependency of Object.keys(readManifest(dir).dependencies ?? {})) queue.push({ name: dependency, from: dir });
  }
  return tarballs;
}

if (import.meta.main) {
  for (const tarball of pack()) console.log(relative(process.cwd(), tarball));
}
