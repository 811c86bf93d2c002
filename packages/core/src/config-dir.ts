/**
 * Where mcudpt keeps its keys, certificate and trust files: $MCUDPT_CONFIG_DIR, else
 * $XDG_CONFIG_HOME/mcudpt, else ~/.config/mcudpt (as ssh keeps ~/.ssh). Tests and containers point
 * MCUDPT_CONFIG_DIR elsewhere.
 */
import { homedir } from "node:os";
import { join } from "node:path";

export function configDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MCUDPT_CONFIG_DIR) return env.MCUDPT_CONFIG_DIR;
  // The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
  if (env.XDG_CONFIG_HOME?.startsWith("/")) return join(env.XDG_CONFIG_HOME, "mcudpt");
  return join(homedir(), ".config", "mcudpt");
}

export function configPath(name: string, env: NodeJS.ProcessEnv = process.env): string {
  return join(configDir(env), name);
}
