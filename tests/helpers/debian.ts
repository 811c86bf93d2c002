/**
 * Real programs the end-to-end suites run as peers (nginx, tinyproxy), from Debian's packages. A
 * missing one is installed here only on CI (CI=true, running as root, apt-get present): a developer's
 * test run never touches the system, it skips with the reason instead.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

const SEARCHED = ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"];

/** The program's path, or undefined. */
export function findProgram(name: string): string | undefined {
  const found = spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" });
  if (found.status === 0 && found.stdout.trim() !== "") return found.stdout.trim();
  return SEARCHED.map((dir) => `${dir}/${name}`).find((path) => existsSync(path));
}

let updated = false;

/**
 * `program` from Debian package `pkg`: its path, or why not (a skip message). Installs it with
 * apt-get only when CI=true and running as root; bounded (apt-get update 5 min, install 10 min).
 */
export function debianProgram(program: string, pkg: string): { path?: string; skip?: string } {
  const path = findProgram(program);
  if (path) return { path };
  const root = typeof process.getuid === "function" && process.getuid() === 0;
  if (process.env.CI !== "true" || !root || !findProgram("apt-get")) {
    return {
      skip: `${program} is not installed (Debian package ${pkg}: apt-get install ${pkg}; the suite installs it itself only as root with CI=true)`,
    };
  }
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  if (!updated) {
    spawnSync("apt-get", ["update", "-qq"], { stdio: "ignore", timeout: 300_000, env });
    updated = true;
  }
  const install = spawnSync("apt-get", ["install", "-y", "-qq", "--no-install-recommends", pkg], {
    encoding: "utf8",
    timeout: 600_000,
    env,
  });
  const installed = findProgram(program);
  if (installed) return { path: installed };
  return {
    skip: `${program}: apt-get install ${pkg} failed (exit ${install.status}): ${install.stderr.trim().split("\n").at(-1)}`,
  };
}
