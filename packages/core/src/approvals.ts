/**
 * The listening side's decisions on the keys of peers that dial in: known and authorized keys at once;
 * unknown keys wait for the (one) operator, one question at a time; a "no" stands for a while so a
 * reconnecting peer does not re-ask at every backoff step; a question whose peer left (or refused us)
 * is withdrawn. The peer is told a short reason; the local log gets the details (file names).
 */
import { printable } from "@mcudpt/protocol";
import type { Clock } from "./clock.js";
import { messageOf } from "./errors.js";
import { fingerprint } from "./keys.js";
import type { Logger } from "./logger.js";
import type { AdmissionVerdict, PeerAdmission } from "./trust.js";

export interface OperatorQuestion {
  /** The peer's address:port. */
  peer: string;
  /** Its key's fingerprint, "SHA256:…". */
  fingerprint: string;
}

/**
 * Asks the operator about a key. `cancelled` aborts (its reason says why) when the question is
 * withdrawn. A yes is remembered; a string is a refusal with that reason (nobody could answer).
 */
export type AskOperator = (request: OperatorQuestion, cancelled: AbortSignal) => Promise<boolean | string>;

/** How long an operator's "no" stands before the same key is asked about again. */
export const REFUSAL_MEMORY_MS = 10 * 60_000;

export interface ApprovalsOptions {
  admission?: PeerAdmission;
  askOperator?: AskOperator;
  logger: Logger;
  clock: Clock;
  /** What the peer is ("sender" or "receiver"), for log lines. */
  peerName: string;
  /** The decision for connection `conn`: admit, or refuse telling the peer `reason` (none: the operator's no). */
  decide(conn: number, accepted: boolean, reason?: string): void;
}

interface Question {
  conn: number;
  peer: string;
  publicKey: Uint8Array;
  cancel?: AbortController;
}

export class Approvals {
  private readonly queue: Question[] = [];
  private asking: Question | undefined;
  /** Keys the operator said no to, and until when. */
  private readonly refusedUntil = new Map<string, number>();

  private admission: PeerAdmission | undefined;

  constructor(private readonly options: ApprovalsOptions) {
    this.admission = options.admission;
  }

  /** The trust files as a reload re-read them: the next decision uses these. */
  setAdmission(admission: PeerAdmission | undefined): void {
    this.admission = admission;
  }

  /** The machine's `authorize-peer` output. */
  authorize(conn: number, peer: string, publicKey: Uint8Array, source?: string): void {
    const { logger, peerName, clock } = this.options;
    const print = fingerprint(publicKey);
    let verdict: AdmissionVerdict;
    try {
      verdict = this.admission?.check(publicKey, source) ?? { verdict: "unknown" };
    } catch (error) {
      logger.log("error", `cannot check ${peerName} key ${print}: ${messageOf(error)}`);
      verdict = { verdict: "refused", reason: "the list of trusted keys could not be read" };
    }
    if (verdict.verdict === "trusted") {
      logger.log("info", `${peerName} ${peer} key ${print}: ${verdict.why}`);
      return this.later(conn, true);
    }
    if (verdict.verdict === "refused") {
      logger.log("warn", `refusing ${peerName} ${peer}: ${verdict.reason}`);
      return this.later(conn, false, `key ${print} is not authorized here`);
    }
    if ((this.refusedUntil.get(print) ?? Number.NEGATIVE_INFINITY) > clock.now()) {
      logger.log("info", `refusing ${peerName} ${peer}: key ${print} was refused by the operator a short while ago`);
      return this.later(conn, false, `key ${print} was refused by the operator a short while ago`);
    }
    if (!this.options.askOperator) {
      logger.log(
        "warn",
        `refusing ${peerName} ${peer}: unknown key ${print} (add it to the --authorized-keys file, or accept it once at an interactive prompt)`,
      );
      return this.later(conn, false, `unknown key ${print}: not authorized here`);
    }
    this.queue.push({ conn, peer, publicKey });
    this.askNext();
  }

  /** The machine's `authorization-withdrawn` output: stop asking about `conn`. */
  withdraw(conn: number, why: string): void {
    const index = this.queue.findIndex((q) => q.conn === conn);
    if (index >= 0) {
      const [queued] = this.queue.splice(index, 1);
      const { logger, peerName } = this.options;
      logger.log(
        "info",
        `question about ${peerName} ${queued.peer} key ${fingerprint(queued.publicKey)} withdrawn: ${why}`,
      );
    }
    if (this.asking?.conn === conn) this.asking.cancel?.abort(why);
  }

  /** Answered after the current output is drained: the machine is not re-entered from its own poll. */
  private later(conn: number, accepted: boolean, reason?: string): void {
    queueMicrotask(() => this.options.decide(conn, accepted, reason));
  }

  private askNext(): void {
    if (this.asking) return;
    const next = this.queue.shift();
    if (!next) return;
    const { logger, peerName, clock } = this.options;
    const print = fingerprint(next.publicKey);
    const cancel = new AbortController();
    next.cancel = cancel;
    this.asking = next;
    const ask = this.options.askOperator as AskOperator;
    ask({ peer: next.peer, fingerprint: print }, cancel.signal)
      .catch((error) => {
        if (!cancel.signal.aborted) logger.log("warn", `operator approval failed: ${messageOf(error)}`);
        return false;
      })
      .then((answer) => {
        this.asking = undefined;
        if (cancel.signal.aborted) {
          logger.log(
            "info",
            `question about ${peerName} ${next.peer} key ${print} withdrawn: ${String(cancel.signal.reason)}`,
          );
        } else if (answer === true) {
          this.remember(next, print);
          this.options.decide(next.conn, true);
        } else if (typeof answer === "string") {
          logger.log("warn", `refusing ${peerName} ${next.peer} key ${print}: ${answer}`);
          this.options.decide(next.conn, false, answer);
        } else {
          this.refusedUntil.set(print, clock.now() + REFUSAL_MEMORY_MS);
          logger.log(
            "info",
            `${peerName} ${next.peer} key ${print} refused by the operator (not asked again for 10 min)`,
          );
          this.options.decide(next.conn, false);
        }
        this.askNext();
      });
  }

  private remember(question: Question, print: string): void {
    const { logger, peerName } = this.options;
    try {
      // The comment goes into a trust file: one printable line whatever the address text holds.
      const comment = printable(`approved ${new Date().toISOString().slice(0, 10)} from ${question.peer}`);
      this.admission?.remember(question.publicKey, comment);
      logger.log("info", `${peerName} key ${print} remembered: it will be accepted without asking`);
    } catch (error) {
      logger.log("warn", `could not remember ${peerName} key ${print}: ${messageOf(error)}`);
    }
  }
}
