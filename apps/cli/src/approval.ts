/**
 * The original's operator approval, now naming the peer's key as ssh does: "Sender connection from
 * ADDR, key SHA256:…. Accept? [yes/no]" on stdout (or "Receiver …" on a sender that listens), one
 * line from stdin; anything but yes or no is asked again. Works with a pipe (`echo yes | mcudpt receiver`). Stdin is read only while a question is
 * open and paused otherwise, so an endless pipe (`yes yes | …`) costs no memory; a closed stdin (or /dev/null,
 * as under systemd) refuses without asking, with a reason the peer is told; a sender that leaves before the answer withdraws its question.
 *
 * The question is one printable line (the peer's address and anything else shown go through
 * logLine: no escapes reach the operator's terminal), and it is a PromptLine: while it is open,
 * a log line does not land on it — the prompt line is ended, the log line written, the prompt re-printed.
 */
import { fstatSync } from "node:fs";
import { createInterface, type Interface } from "node:readline";
import type { Readable } from "node:stream";
import { logLine, type OperatorQuestion } from "@mcudpt/core";

const UNATTENDED = "unattended use needs --authorized-keys or --secret";

/** Lines read ahead of a question (a chunk from a pipe holds many); the rest are discarded. */
const MAX_BUFFERED_LINES = 16;

/** Longest peer address shown in the question (an address is far shorter; anything longer is not one). */
const PEER_SHOWN_MAX = 100;

/**
 * The open question on stdout, coordinated with the log lines on stderr. A question is written
 * without a newline (the answer is typed after it); a log line written meanwhile would be glued to
 * it ("Accept? [yes/no] 2026-… warn: …") when both streams reach the same terminal or file. So a
 * log line is written through `interrupt`: the prompt line is ended first and re-printed after it.
 */
export class PromptLine {
  private shown: string | undefined;
  private shares: boolean | undefined;

  /**
   * `out`: where questions go (stdout). `sharesLogStream`: whether log lines reach the same place
   * (by default: stdout and stderr are the same terminal, pipe or file).
   */
  constructor(
    private readonly out: { write(text: string): unknown } = process.stdout,
    private readonly sharesLogStream: () => boolean = stdoutIsStderr,
  ) {}

  /** Whether a question is open (written, not yet answered). */
  get open(): boolean {
    return this.shown !== undefined;
  }

  /** Shows a question, as one printable line; the answer is expected on the same line. */
  ask(question: string): void {
    this.shown = logLine(question, 1024);
    this.out.write(this.shown);
  }

  /** Ends the open question with `text` (the echoed answer and a newline, or just a newline). */
  end(text = ""): void {
    this.shown = undefined;
    if (text) this.out.write(text);
  }

  /** Runs `write` (which writes one log line elsewhere) so that it does not land on the open prompt. */
  interrupt<T>(write: () => T): T {
    if (this.shown === undefined || !this.shared()) return write();
    this.out.write("\n");
    try {
      return write();
    } finally {
      if (this.shown !== undefined) this.out.write(this.shown);
    }
  }

  private shared(): boolean {
    this.shares ??= this.sharesLogStream();
    return this.shares;
  }
}

/** stdout and stderr reach the same terminal, pipe or file (`2>&1`, an interactive shell). */
function stdoutIsStderr(): boolean {
  if (process.stdout.isTTY && process.stderr.isTTY) return true;
  try {
    const out = fstatSync(1);
    const err = fstatSync(2);
    return out.dev === err.dev && out.ino === err.ino && out.rdev === err.rdev;
  } catch {
    return true;
  }
}

export interface ApproverIo {
  /** Where answers are read (default: process.stdin). */
  input?: Readable & { isTTY?: boolean };
  /** Where questions are shown (default: a PromptLine on stdout). Share it with the logger. */
  prompt?: PromptLine;
}

export function stdinApprover(
  peerName: "sender" | "receiver",
  io: ApproverIo = {},
): (question: OperatorQuestion, cancelled: AbortSignal) => Promise<boolean | string> {
  const stdin = io.input ?? process.stdin;
  const prompt = io.prompt ?? new PromptLine();
  let reader: Interface | undefined;
  let ended = false;
  const lines: string[] = [];
  let waiter: ((line: string | undefined) => void) | undefined;

  const start = (): Interface => {
    if (reader) return reader;
    const created = createInterface({ input: stdin, terminal: false });
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

  return async (question, cancelled) => {
    // Shown as one printable line whatever the peer managed to put in them.
    const peer = logLine(question.peer, PEER_SHOWN_MAX);
    const fingerprint = logLine(question.fingerprint, PEER_SHOWN_MAX);
    const who = `${peerName[0].toUpperCase()}${peerName.slice(1)}`;
    // Asking to serve some mappings only: a yes admits (and remembers) the key for those.
    const scope = question.mappings ? `, for mappings ${logLine(question.mappings.join(", "), PEER_SHOWN_MAX)}` : "";
    if ((io.input === undefined && stdinCannotAnswer()) || (ended && lines.length === 0)) {
      return `nobody can approve a new key at this ${peerName === "sender" ? "receiver" : "sender"} (stdin is closed); ${UNATTENDED}`;
    }
    const input = start();
    // Like ssh: anything but yes or no is asked again (a few times), not taken as no.
    for (let attempt = 0; attempt < 3; attempt++) {
      prompt.ask(
        attempt === 0
          ? `${who} connection from ${peer}, key ${fingerprint}${scope}. Accept? [yes/no] `
          : `Please type 'yes' or 'no': `,
      );
      const line = await read(input, cancelled);
      if (cancelled.aborted) {
        // The machine says why (the peer closed the connection, perhaps refusing this side's key).
        const reason = cancelled.reason;
        const why =
          typeof reason === "string" ? logLine(reason, 200) : `${peerName} ${peer} went away before an answer`;
        prompt.end(`\n(question withdrawn: ${why})\n`);
        return false;
      }
      if (line === undefined) {
        prompt.end("\n");
        return `nobody can approve a new key here (stdin is closed); ${UNATTENDED}`;
      }
      // On a terminal the typed answer and its newline are already on the screen; from a pipe, echo it.
      prompt.end(stdin.isTTY ? "" : `${logLine(line.trim(), 200)}\n`);
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
