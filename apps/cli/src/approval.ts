/**
 * The original's operator approval: "Sender connection from ADDR. Accept? [yes/no]" on stdout, one line
 * from stdin. Works with a pipe (`yes yes | mcudpt receiver`); stdin is read only once a sender asks,
 * and a closed stdin refuses rather than hangs.
 */
import { createInterface, type Interface } from "node:readline";
import type { Logger } from "@mcudpt/core";

export function stdinApprover(logger: Logger): (peer: string) => Promise<boolean> {
  let reader: Interface | undefined;
  let ended = false;
  const lines: string[] = [];
  const waiting: Array<(line: string | undefined) => void> = [];

  const start = (): void => {
    if (reader) return;
    reader = createInterface({ input: process.stdin, terminal: false });
    reader.on("line", (line) => {
      const waiter = waiting.shift();
      if (waiter) waiter(line);
      else lines.push(line);
    });
    reader.on("close", () => {
      ended = true;
      for (const waiter of waiting.splice(0)) waiter(undefined);
    });
  };

  return async (peer) => {
    start();
    process.stdout.write(`Sender connection from ${peer}. Accept? [yes/no] `);
    const line = lines.shift() ?? (ended ? undefined : await new Promise<string | undefined>((r) => waiting.push(r)));
    if (line === undefined) {
      process.stdout.write("\n");
      logger.log("warn", `stdin is closed: refusing sender ${peer} (use --secret for unattended receivers)`);
      return false;
    }
    const accepted = /^\s*y(es)?\s*$/i.test(line);
    if (!process.stdin.isTTY) process.stdout.write(`${line.trim()}\n`);
    return accepted;
  };
}
