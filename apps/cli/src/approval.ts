/**
 * The original's operator approval, now naming the sender's key as ssh does: "Sender connection from
 * ADDR, key SHA256:…. Accept? [yes/no]" on stdout, one line
 * from stdin. Works with a pipe (`echo yes | mcudpt receiver`). Stdin is read only while a question is
 * open and paused otherwise, so an endless pipe (`yes yes | …`) costs no memory; a closed stdin refuses
 * without asking; a sender that leaves before the answer withdraws its question.
 */
import { createInterface, type Interface } from "node:readline";
import type { Logger, OperatorQuestion } from "@mcudpt/core";

const UNATTENDED = "unattended receivers use --authorized-keys or --secret";

/** Lines read ahead of a question (a chunk from a pipe holds many); the rest are discarded. */
const MAX_BUFFERED_LINES = 16;

export function stdinApprover(
  logger: Logger,
): (question: OperatorQuestion, cancelled: AbortSignal) => Promise<boolean> {
  let reader: Interface | undefined;
  let ended = false;
  const lines: string[] = [];
  let waiter: ((line: string | undefined) => void) | undefined;

  const start = (): Interface => {
    if (reader) return reader;
    const created = createInterface({ input: process.stdin, terminal: false });
    created.on("line", (line) => {
      if (waiter) {
        const answer = waiter;
        waiter = undefined;
        answer(line);
      } else if (lines.length < MAX_BUFFERED_LINES) {
        lines.push(line);
      }
      if (!waiter) created.pause();
    });
    created.on("close", () => {
      ended = true;
      const answer = waiter;
      waiter = undefined;
      answer?.(undefined);
    });
    reader = created;
    return created;
  };

  return async ({ peer, fingerprint }, cancelled) => {
    const input = start();
    if (ended && lines.length === 0) {
      logger.log(
        "warn",
        `sender ${peer} (key ${fingerprint}) refused: stdin is closed, nobody can approve it (${UNATTENDED})`,
      );
      return false;
    }
    process.stdout.write(`Sender connection from ${peer}, key ${fingerprint}. Accept? [yes/no] `);
    let line = lines.shift();
    if (line === undefined) {
      line = await new Promise<string | undefined>((resolve) => {
        waiter = resolve;
        cancelled.addEventListener("abort", () => {
          if (waiter === resolve) waiter = undefined;
          resolve(undefined);
        });
        input.resume();
      });
    }
    if (cancelled.aborted) {
      process.stdout.write(`\n(sender ${peer} went away before an answer)\n`);
      return false;
    }
    if (line === undefined) {
      process.stdout.write("\n");
      logger.log("warn", `stdin is closed: refusing sender ${peer} (${UNATTENDED})`);
      return false;
    }
    if (!process.stdin.isTTY) process.stdout.write(`${line.trim()}\n`);
    return /^\s*y(es)?\s*$/i.test(line);
  };
}
