/**
 * Publishes the packed tarballs (scripts/pack.ts) to npm, dependencies first, skipping versions the
 * registry already has, then tags the release with changesets. Run after `bun run changeset version`
 * has been committed (see CONTRIBUTING.md). `--dry-run` packs and shows what would be published.
 *
 * `changeset publish` is not used: it runs `npm publish` in the package folders, which would ship
 * `workspace:*` ranges and the "bun" → src/*.ts export condition.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { pack } from "./pack.ts";

const dryRun = process.argv.includes("--dry-run");

execFileSync("bun", ["run", "build"], { stdio: "inherit" });
for (const tarball of pack()) {
  const manifest = JSON.parse(execFileSync("tar", ["-xzOf", tarball, "package/package.json"], { encoding: "utf8" }));
  const id = `${manifest.name}@${manifest.version}`;
  const published = spawnSync("npm", ["view", id, "version"], { encoding: "utf8" });
  if (published.status === 0 && published.stdout.trim() === manifest.version) {
    console.log(`${id}: already on the registry, skipped`);
    continue;
  }
  console.log(`${id}: publishing ${tarball}${dryRun ? " (dry run)" : ""}`);
  execFileSync("npm", ["publish", tarball, "--access", "public", ...(dryRun ? ["--dry-run"] : [])], {
    stdio: "inherit",
  });
}
if (!dryRun) execFileSync("bunx", ["--bun", "changeset", "tag"], { stdio: "inherit" });
