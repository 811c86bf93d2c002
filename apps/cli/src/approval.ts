/**
 * The original's operator approval, now naming the peer's key as ssh does: "Sender connection from
 * ADDR, key SHA256:…. Accept? [yes/no]" on stdout (or "Receiver …" on a sender that listens), one
 * line from stdin; anything but yes or no is asked again. Works with a pipe (`echo yes | mcudpt receiver`). Stdin is read only while a question is
 * open and paused otherwise, so an endless pipe (`yes yes | …`) costs no memory; a closed stdin (or /dev/null,
 * as under systemd) refuses without asking, with a reason the peer is told; a sender that leaves before the answer withdraws its question.
 */
import { fstatSync } from "node:fs";
import { createInterface, type Interface } from "node:readline";
import type { OperatorQuestion } from "@mcudpt/core";

const UNATTENDED = "unattended use needs --authorized-keys or --secret";

/** Lines read ahead of a question (a chunk from a pipe holds many); the rest are discarded. */
const MAX_BUFFERED_LINES = 16;

export function stdinApprover(
  peerName: "sender" | "receiver",
): (question: OperatorQuestion, cancelled: AbortSignal) => Promise<boolean | string> {
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

  const read = (input: Interface, cancelled: AbortSignal): Promise<string | undefined> => {
    const buffered = lines.shift();
    if (buffered !== undefined) return Promise.resolve(buffered);
    return new Promise<string | undefined>((resolve) => {
      waiter = resolve;
      cancelled.addEventListener("abort", () => {
        if (waiter === resolve) waiter = undefined;
        resolve(undefined);
      });
      input.resume();
    });
  };

  return async ({ peer, fingerprint }, cancelled) => {
    const who = `${peerName[0].toUpperCase()}${peerName.slice(1)}`;
    if (stdinCannotAnswer() || (ended && lines.length === 0)) {
      return `nobody can approve a new key at this ${peerName === "sender" ? "receiver" : "sender"} (stdin is closed); ${UNATTENDED}`;
    }
    const input = start();
    // Like ssh: anything but yes or no is asked again (a few times), not taken as no.
    for (let attempt = 0; attempt < 3; attempt++) {
      process.stdout.write(
        attempt === 0
          ? `${who} connection from ${peer}, key ${fingerprint}. Accept? [yes/no] `
          : `Please type 'yes' or 'no': `,
      );
      const line = await read(input, cancelled);
      if (cancelled.aborted) {
        process.stdout.write(`\n(${peerName} ${peer} went away before an answer)\n`);
        return false;
      }
      if (line === undefined) {
        process.stdout.write("\n");
        return `nobody can approve a new key here (stdin is closed); ${UNATTENDED}`;
      }
      if (!process.stdin.isTTY) process.stdout.write(`${line.trim()}\n`);
      if (/^\s*y(es)?\s*$/i.test(line)) return true;
      if (/^\s*no?\s*$/i.test(line)) return false;
    }
    return false;
  };
}

/** Stdin is /dev/null (a service, `< /dev/null`): asking would only print a question nobody sees. */
function stdinCannotAnswer(): boolean {
  if (process.stdin.isTTY) return false;
  try {
    return fstatSync(0).isCharacterDevice();
  } catch {
    return true;
  }
}
