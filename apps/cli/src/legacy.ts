/**
 * Command-line compatibility with the original Go mcudpt (`mcudpt -mode receiver -udp :53 -tcp :5353`):
 * Go's flag package takes `-name value`, `-name=value` and `--name value`, and the mode is a flag, not
 * a subcommand. This rewrites such a command line into `mcudpt receiver --udp :53 --tcp :5353`.
 */
import { UserError } from "@mcudpt/core";

export const COMMANDS = ["receiver", "sender", "demo"] as const;

/**
 * `longFlags` are the flag names (without dashes) the commands accept; single-dash spellings of them
 * (`-udp`, `-secret`) are accepted everywhere, as Go users type them.
 */
export function normalizeArgv(argv: string[], longFlags: ReadonlySet<string>): string[] {
  const out: string[] = [];
  let mode: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const match = /^--?([A-Za-z][\w-]*)(=(.*))?$/.exec(arg);
    if (!match) {
      out.push(arg);
      continue;
    }
    const [, name, hasValue, inlineValue] = match;
    if (name === "mode") {
      const value = hasValue ? inlineValue : argv[++i];
      if (value === undefined) throw new UserError("-mode needs a value: receiver or sender");
      if (value !== "receiver" && value !== "sender") {
        throw new UserError(`unknown mode "${value}": expected receiver or sender`);
      }
      mode = value;
      continue;
    }
    // Single-dash long flags (Go style) become double-dash; -v, -h stay short flags.
    if (arg.startsWith("-") && !arg.startsWith("--") && name.length > 1 && longFlags.has(name)) {
      out.push(hasValue ? `--${name}=${inlineValue}` : `--${name}`);
      continue;
    }
    out.push(arg);
  }
  if (mode === undefined) return out;
  const first = out.find((a) => !a.startsWith("-"));
  if (first && (COMMANDS as readonly string[]).includes(first) && first !== mode) {
    throw new UserError(`-mode ${mode} contradicts the command "${first}"`);
  }
  return first === mode ? out : [mode, ...out];
}
