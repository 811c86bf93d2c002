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
  /**
   * The mappings (by name) it asks to serve, when that is some of this side's and not all: a yes
   * admits it for those (and is remembered so). Absent: all of them.
   */
  mappings?: string[];
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
  /**
   * The decision for connection `conn`: admit (for `mappings` by name; all when absent), or refuse
   * telling the peer `reason` (none: the operator's no).
   */
  decide(conn: number, accepted: boolean, reason?: string, mappings?: readonly string[]): void;
  /**
   * Whether an admitted peer is connected: an unknown key is then refused without asking (the
   * original's "only one verification is required"); known keys may still join, as standby.
   */
  busy?: () => boolean;
  /** This side's mapping names as they are now (a reload may change them), to tell a question about some from one about all. */
  mappingNames?: () => readonly string[];
}

interface Question {
  conn: number;
  peer: string;
  publicKey: Uint8Array;
  /** The mappings asked for, when some and not all (see OperatorQuestion). */
  mappings?: string[];
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

  /** The machine's `authorize-peer` output; `mappings`, the names of the mappings the peer asks for. */
  authorize(conn: number, peer: string, publicKey: Uint8Array, source?: string, mappings: string[] = []): void {
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
      return this.later(conn, true, undefined, verdict.mappings);
    }
    if (verdict.verdict === "refused") {
      logger.log("warn", `refusing ${peerName} ${peer}: ${verdict.reason}`);
      return this.later(conn, false, `key ${print} is not authorized here`);
    }
    if ((this.refusedUntil.get(print) ?? Number.NEGATIVE_INFINITY) > clock.now()) {
      logger.log("info", `refusing ${peerName} ${peer}: key ${print} was refused by the operator a short while ago`);
      return this.later(conn, false, `key ${print} was refused by the operator a short while ago`);
    }
    if (this.options.busy?.()) {
      logger.log(
        "warn",
        `refusing ${peerName} ${peer}: unknown key ${print}, and a ${peerName} is connected (only one verification is required; list the key in --authorized-keys to let it join)`,
      );
      return this.later(conn, false, `unknown key ${print}: not authorized here while a ${peerName} is connected`);
    }
    if (!this.options.askOperator) {
      logger.log(
        "warn",
        `refusing ${peerName} ${peer}: unknown key ${print} (add it to the --authorized-keys file, or accept it once at an interactive prompt)`,
      );
      return this.later(conn, false, `unknown key ${print}: not authorized here`);
    }
    this.queue.push({ conn, peer, publicKey, mappings: this.subset(mappings) });
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
  private later(conn: number, accepted: boolean, reason?: string, mappings?: readonly string[]): void {
    queueMicrotask(() => this.options.decide(conn, accepted, reason, mappings));
  }

  /** `asked` when it names some of this side's mappings and not all; undefined otherwise (all). */
  private subset(asked: string[]): string[] | undefined {
    const names = this.options.mappingNames?.() ?? [];
    if (asked.length === 0 || asked.length >= names.length || asked.some((name) => name === "")) return undefined;
    return asked;
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
    ask({ peer: next.peer, fingerprint: print, ...(next.mappings ? { mappings: next.mappings } : {}) }, cancel.signal)
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
          this.options.decide(next.conn, true, undefined, next.mappings);
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
      this.admission?.remember(question.publicKey, comment, question.mappings);
      const scope = question.mappings ? ` for mappings ${question.mappings.join(", ")}` : "";
      logger.log("info", `${peerName} key ${print} remembered${scope}: it will be accepted without asking`);
    } catch (error) {
      logger.log("warn", `could not remember ${peerName} key ${print}: ${messageOf(error)}`);
    }
  }
}
