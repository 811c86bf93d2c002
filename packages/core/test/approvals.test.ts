/**
 * Approvals (src/approvals.ts): the listening side's decisions on dialing peers' keys, with a fake
 * PeerAdmission, a scripted operator and a manual clock.
 */
import { describe, expect, test } from "bun:test";
import { Approvals, type AskOperator, type OperatorQuestion, REFUSAL_MEMORY_MS } from "../src/approvals.ts";
import { fingerprint } from "../src/keys.ts";
import type { AdmissionVerdict, PeerAdmission } from "../src/trust.ts";
import { type Deferred, deferred, FakeClock, recordingLogger } from "./fakes.ts";

const key = (n: number) => new Uint8Array(32).fill(n);
const KEY_A = key(1);
const KEY_B = key(2);
const KEY_C = key(3);

interface Decision {
  conn: number;
  accepted: boolean;
  reason?: string;
}

/** A PeerAdmission answering `verdict` for every key (or per key), recording remember() calls. */
function fakeAdmission(verdict: (publicKey: Uint8Array) => AdmissionVerdict = () => ({ verdict: "unknown" })) {
  const remembered: Array<{ publicKey: Uint8Array; comment: string }> = [];
  const admission: PeerAdmission & { remembered: typeof remembered; rememberError?: Error } = {
    remembered,
    check: (publicKey) => verdict(publicKey),
    remember(publicKey, comment) {
      if (admission.rememberError) throw admission.rememberError;
      remembered.push({ publicKey, comment });
    },
  };
  return admission;
}

/** An operator whose answers the test gives, question by question. */
function scriptedOperator() {
  const questions: Array<{ question: OperatorQuestion; signal: AbortSignal; answer: Deferred<boolean | string> }> = [];
  const ask: AskOperator = (question, signal) => {
    const answer = deferred<boolean | string>();
    // A well-behaved prompt: gives up when the question is withdrawn.
    signal.addEventListener("abort", () => answer.reject(new Error("prompt cancelled")));
    questions.push({ question, signal, answer });
    return answer.promise;
  };
  return { ask, questions };
}

function setup(options: { admission?: PeerAdmission; askOperator?: AskOperator } = {}) {
  const logger = recordingLogger();
  const clock = new FakeClock();
  const decisions: Decision[] = [];
  const approvals = new Approvals({
    admission: options.admission,
    askOperator: options.askOperator,
    logger,
    clock,
    peerName: "sender",
    decide: (conn, accepted, reason) =>
      decisions.push(reason === undefined ? { conn, accepted } : { conn, accepted, reason }),
  });
  return { approvals, logger, clock, decisions };
}

/** Lets queued microtasks and promise continuations (decisions, the next question) run. */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

describe("Approvals: the admission's verdict", () => {
  test("a trusted key is admitted, and the reason is logged", async () => {
    const admission = fakeAdmission(() => ({ verdict: "trusted", why: "listed in /etc/mcudpt/authorized_keys" }));
    const { approvals, decisions, logger } = setup({ admission });
    approvals.authorize(7, "192.0.2.1:4000", KEY_A);
    await flush();
    expect(decisions).toEqual([{ conn: 7, accepted: true }]);
    expect(logger.lines("info").some((l) => l.includes("listed in /etc/mcudpt/authorized_keys"))).toBe(true);
    expect(logger.lines("info").some((l) => l.includes(fingerprint(KEY_A)))).toBe(true);
  });

  test("a refused key is refused with a short reason naming no file; the log has the detail", async () => {
    const admission = fakeAdmission(() => ({
      verdict: "refused",
      reason: `key ${fingerprint(KEY_A)} is not in /home/op/.config/mcudpt/authorized_keys`,
    }));
    const operator = scriptedOperator();
    const { approvals, decisions, logger } = setup({ admission, askOperator: operator.ask });
    approvals.authorize(3, "192.0.2.1:4000", KEY_A);
    await flush();
    expect(decisions).toHaveLength(1);
    expect(decisions[0].conn).toBe(3);
    expect(decisions[0].accepted).toBe(false);
    expect(decisions[0].reason).toBe(`key ${fingerprint(KEY_A)} is not authorized here`);
    expect(decisions[0].reason).not.toContain("authorized_keys");
    expect(operator.questions).toHaveLength(0); // a refusal is not the operator's to overturn
    expect(logger.lines("warn").some((l) => l.includes("/home/op/.config/mcudpt/authorized_keys"))).toBe(true);
  });

  test("an admission that throws (an unreadable file) refuses, logging the error locally only", async () => {
    const admission = fakeAdmission(() => {
      throw new Error("cannot read /srv/keys: EACCES");
    });
    const operator = scriptedOperator();
    const { approvals, decisions, logger } = setup({ admission, askOperator: operator.ask });
    approvals.authorize(1, "192.0.2.1:4000", KEY_A);
    await flush();
    expect(decisions).toEqual([
      { conn: 1, accepted: false, reason: `key ${fingerprint(KEY_A)} is not authorized here` },
    ]);
    expect(operator.questions).toHaveLength(0);
    expect(logger.lines("error").some((l) => l.includes("cannot read /srv/keys: EACCES"))).toBe(true);
  });

  test("an unknown key with nobody to ask is refused with a short reason naming no file", async () => {
    const admission = fakeAdmission();
    const { approvals, decisions, logger } = setup({ admission });
    approvals.authorize(4, "192.0.2.9:1234", KEY_B);
    await flush();
    expect(decisions).toEqual([
      { conn: 4, accepted: false, reason: `unknown key ${fingerprint(KEY_B)}: not authorized here` },
    ]);
    const reason = decisions[0].reason as string;
    expect(reason).not.toContain("--authorized-keys");
    expect(reason).not.toContain("file");
    expect(reason.length).toBeLessThan(120);
    // The operator's log says how to let it in.
    expect(logger.lines("warn").some((l) => l.includes("--authorized-keys"))).toBe(true);
  });

  test("no admission at all: every key is unknown", async () => {
    const { approvals, decisions } = setup();
    approvals.authorize(2, "192.0.2.9:1234", KEY_A);
    await flush();
    expect(decisions).toEqual([
      { conn: 2, accepted: false, reason: `unknown key ${fingerprint(KEY_A)}: not authorized here` },
    ]);
  });
});

describe("Approvals: decisions are asynchronous", () => {
  test("decide is never called from within authorize() (the machine is not re-entered from its poll)", async () => {
    const logger = recordingLogger();
    let inside = false;
    const calls: Array<{ conn: number; inside: boolean }> = [];
    const approvals = new Approvals({
      admission: fakeAdmission((k) =>
        k[0] === 1 ? { verdict: "trusted", why: "known" } : { verdict: "refused", reason: "no" },
      ),
      logger,
      clock: new FakeClock(),
      peerName: "sender",
      decide: (conn) => calls.push({ conn, inside }),
    });
    inside = true;
    approvals.authorize(1, "p:1", KEY_A); // trusted
    approvals.authorize(2, "p:2", KEY_B); // refused
    approvals.authorize(3, "p:3", KEY_C); // unknown, nobody to ask
    inside = false;
    expect(calls).toEqual([]);
    await Promise.resolve(); // a microtask later, not a timer later
    expect(calls).toEqual([
      { conn: 1, inside: false },
      { conn: 2, inside: false },
      { conn: 3, inside: false },
    ]);
  });
});

describe("Approvals: the operator", () => {
  test("is asked about an unknown key, with the peer and the fingerprint", async () => {
    const operator = scriptedOperator();
    const { approvals } = setup({ admission: fakeAdmission(), askOperator: operator.ask });
    approvals.authorize(1, "192.0.2.1:4000", KEY_A);
    expect(operator.questions.map((q) => q.question)).toEqual([
      { peer: "192.0.2.1:4000", fingerprint: fingerprint(KEY_A) },
    ]);
    expect(operator.questions[0].signal.aborted).toBe(false);
  });

  test("one question at a time, in the order the peers came", async () => {
    const operator = scriptedOperator();
    const { approvals, decisions } = setup({ admission: fakeAdmission(), askOperator: operator.ask });
    approvals.authorize(1, "p:1", KEY_A);
    approvals.authorize(2, "p:2", KEY_B);
    approvals.authorize(3, "p:3", KEY_C);
    await flush();
    expect(operator.questions).toHaveLength(1);
    operator.questions[0].answer.resolve(true);
    await flush();
    expect(decisions).toEqual([{ conn: 1, accepted: true }]);
    expect(operator.questions).toHaveLength(2);
    expect(operator.questions[1].question.peer).toBe("p:2");
    operator.questions[1].answer.resolve(true);
    await flush();
    expect(operator.questions).toHaveLength(3);
    expect(operator.questions[2].question.peer).toBe("p:3");
    operator.questions[2].answer.resolve(true);
    await flush();
    expect(decisions.map((d) => d.conn)).toEqual([1, 2, 3]);
  });

  test("a yes admits and is remembered in the admission (with the peer in the comment)", async () => {
    const operator = scriptedOperator();
    const admission = fakeAdmission();
    const { approvals, decisions, logger } = setup({ admission, askOperator: operator.ask });
    approvals.authorize(5, "198.51.100.7:999", KEY_A);
    operator.questions[0].answer.resolve(true);
    await flush();
    expect(decisions).toEqual([{ conn: 5, accepted: true }]);
    expect(admission.remembered).toHaveLength(1);
    expect(admission.remembered[0].publicKey).toEqual(KEY_A);
    expect(admission.remembered[0].comment).toContain("198.51.100.7:999");
    expect(logger.lines("info").some((l) => l.includes("remembered"))).toBe(true);
  });

  test("a yes that cannot be remembered is logged, and the peer is still admitted", async () => {
    const operator = scriptedOperator();
    const admission = fakeAdmission();
    admission.rememberError = new Error("cannot write /ro/known_senders: EROFS");
    const { approvals, decisions, logger } = setup({ admission, askOperator: operator.ask });
    approvals.authorize(5, "p:5", KEY_A);
    operator.questions[0].answer.resolve(true);
    await flush();
    expect(decisions).toEqual([{ conn: 5, accepted: true }]);
    expect(logger.lines("warn").some((l) => l.includes("could not remember") && l.includes("EROFS"))).toBe(true);
    expect(logger.lines("info").some((l) => l.includes("will be accepted without asking"))).toBe(false);
  });

  test("a no refuses (no reason: the operator's no) and stands for REFUSAL_MEMORY_MS, then the key is asked about again", async () => {
    const operator = scriptedOperator();
    const { approvals, decisions, clock, logger } = setup({ admission: fakeAdmission(), askOperator: operator.ask });
    approvals.authorize(1, "p:1", KEY_A);
    operator.questions[0].answer.resolve(false);
    await flush();
    expect(decisions).toEqual([{ conn: 1, accepted: false }]);
    expect(logger.lines("info").some((l) => l.includes("refused by the operator"))).toBe(true);

    // The peer reconnects at its next backoff step: refused without asking.
    clock.advance(REFUSAL_MEMORY_MS - 1);
    approvals.authorize(2, "p:1", KEY_A);
    await flush();
    expect(operator.questions).toHaveLength(1);
    expect(decisions[1]).toEqual({
      conn: 2,
      accepted: false,
      reason: `key ${fingerprint(KEY_A)} was refused by the operator a short while ago`,
    });

    // Another key meanwhile is asked about as usual.
    approvals.authorize(3, "p:3", KEY_B);
    expect(operator.questions).toHaveLength(2);
    expect(operator.questions[1].question.fingerprint).toBe(fingerprint(KEY_B));
    operator.questions[1].answer.resolve(true);
    await flush();

    // Once the memory expires, the operator is asked again.
    clock.advance(1);
    approvals.authorize(4, "p:1", KEY_A);
    await flush();
    expect(operator.questions).toHaveLength(3);
    expect(operator.questions[2].question.fingerprint).toBe(fingerprint(KEY_A));
  });

  test("a failed prompt counts as a no (logged), and is remembered like one", async () => {
    let calls = 0;
    const ask: AskOperator = async () => {
      calls++;
      throw new Error("stdin closed");
    };
    const { approvals, decisions, logger } = setup({ admission: fakeAdmission(), askOperator: ask });
    approvals.authorize(1, "p:1", KEY_A);
    await flush();
    expect(decisions).toEqual([{ conn: 1, accepted: false }]);
    expect(logger.lines("warn").some((l) => l.includes("operator approval failed") && l.includes("stdin closed"))).toBe(
      true,
    );
    approvals.authorize(2, "p:1", KEY_A);
    await flush();
    expect(calls).toBe(1);
  });

  test("a string answer is a refusal with that reason, and is not remembered", async () => {
    const operator = scriptedOperator();
    const admission = fakeAdmission();
    const { approvals, decisions, logger } = setup({ admission, askOperator: operator.ask });
    approvals.authorize(1, "p:1", KEY_A);
    operator.questions[0].answer.resolve("nobody is at the terminal to approve new keys");
    await flush();
    expect(decisions).toEqual([{ conn: 1, accepted: false, reason: "nobody is at the terminal to approve new keys" }]);
    expect(admission.remembered).toHaveLength(0);
    expect(logger.lines("warn").some((l) => l.includes("nobody is at the terminal"))).toBe(true);
    // Not an operator's no: the next attempt asks again.
    approvals.authorize(2, "p:1", KEY_A);
    await flush();
    expect(operator.questions).toHaveLength(2);
  });
});

describe("Approvals: withdrawn questions", () => {
  test("a queued question withdrawn is never asked and never decided", async () => {
    const operator = scriptedOperator();
    const { approvals, decisions } = setup({ admission: fakeAdmission(), askOperator: operator.ask });
    approvals.authorize(1, "p:1", KEY_A);
    approvals.authorize(2, "p:2", KEY_B);
    approvals.authorize(3, "p:3", KEY_C);
    approvals.withdraw(2, "the sender disconnected");
    operator.questions[0].answer.resolve(true);
    await flush();
    expect(operator.questions.map((q) => q.question.peer)).toEqual(["p:1", "p:3"]);
    operator.questions[1].answer.resolve(true);
    await flush();
    expect(decisions.map((d) => d.conn)).toEqual([1, 3]);
  });

  test("the current question withdrawn: its signal aborts with the reason, no decision, logged, the next is asked", async () => {
    const operator = scriptedOperator();
    const { approvals, decisions, logger } = setup({ admission: fakeAdmission(), askOperator: operator.ask });
    approvals.authorize(1, "p:1", KEY_A);
    approvals.authorize(2, "p:2", KEY_B);
    const current = operator.questions[0];
    approvals.withdraw(1, "the sender disconnected");
    expect(current.signal.aborted).toBe(true);
    expect(current.signal.reason).toBe("the sender disconnected");
    await flush();
    expect(decisions).toEqual([]);
    const withdrawn = logger.lines("info").filter((l) => l.includes("withdrawn"));
    expect(withdrawn).toHaveLength(1);
    expect(withdrawn[0]).toContain("p:1");
    expect(withdrawn[0]).toContain("the sender disconnected");
    // The prompt's own rejection (it was cancelled) is not reported as a failure.
    expect(logger.lines("warn").some((l) => l.includes("operator approval failed"))).toBe(false);
    expect(operator.questions).toHaveLength(2);
    expect(operator.questions[1].question.peer).toBe("p:2");
  });

  test("an answer that arrives after the withdrawal is ignored (a yes is neither decided nor remembered)", async () => {
    const admission = fakeAdmission();
    let answer!: Deferred<boolean | string>;
    const ask: AskOperator = () => {
      answer = deferred();
      return answer.promise; // ignores the signal, answers later anyway
    };
    const { approvals, decisions } = setup({ admission, askOperator: ask });
    approvals.authorize(1, "p:1", KEY_A);
    approvals.withdraw(1, "gone");
    answer.resolve(true);
    await flush();
    expect(decisions).toEqual([]);
    expect(admission.remembered).toHaveLength(0);
  });

  test("withdrawing a connection with no question, or one already decided, changes nothing", async () => {
    const operator = scriptedOperator();
    const { approvals, decisions } = setup({ admission: fakeAdmission(), askOperator: operator.ask });
    approvals.authorize(1, "p:1", KEY_A);
    approvals.withdraw(99, "not ours");
    expect(operator.questions[0].signal.aborted).toBe(false);
    operator.questions[0].answer.resolve(true);
    await flush();
    approvals.withdraw(1, "too late");
    await flush();
    expect(decisions).toEqual([{ conn: 1, accepted: true }]);
  });
});

describe("Approvals: several senders (§18)", () => {
  function withSenders(options: { admission: PeerAdmission; askOperator?: AskOperator; busy: boolean }) {
    const decisions: Array<{ conn: number; accepted: boolean; reason?: string; mappings?: readonly string[] }> = [];
    const logger = recordingLogger();
    const approvals = new Approvals({
      admission: options.admission,
      askOperator: options.askOperator,
      logger,
      clock: new FakeClock(),
      peerName: "sender",
      busy: () => options.busy,
      mappingNames: () => ["dns", "ntp", "wg"],
      decide: (conn, accepted, reason, mappings) => decisions.push({ conn, accepted, reason, mappings }),
    });
    return { approvals, decisions, logger };
  }

  test("a trusted key's mappings= go to the machine with the admission", async () => {
    const admission = fakeAdmission(() => ({ verdict: "trusted", why: "listed", mappings: ["dns"] }));
    const { approvals, decisions } = withSenders({ admission, busy: true });
    approvals.authorize(1, "127.0.0.1:5000", KEY_A, "127.0.0.1", ["dns", "ntp"]);
    await flush();
    expect(decisions).toEqual([{ conn: 1, accepted: true, reason: undefined, mappings: ["dns"] }]);
  });

  test("while a sender is connected an unknown key is refused without asking anyone", async () => {
    const operator = scriptedOperator();
    const { approvals, decisions, logger } = withSenders({
      admission: fakeAdmission(),
      askOperator: operator.ask,
      busy: true,
    });
    approvals.authorize(2, "127.0.0.1:5001", KEY_B, "127.0.0.1", ["dns"]);
    await flush();
    expect(operator.questions).toEqual([]);
    expect(decisions).toEqual([
      {
        conn: 2,
        accepted: false,
        reason: `unknown key ${fingerprint(KEY_B)}: not authorized here while a sender is connected`,
        mappings: undefined,
      },
    ]);
    expect(logger.lines().some((l) => l.includes("only one verification is required"))).toBe(true);
  });

  test("the operator is asked about the mappings asked for; a yes admits and remembers the key for them", async () => {
    const operator = scriptedOperator();
    const admission = fakeAdmission();
    const remembered: Array<readonly string[] | undefined> = [];
    admission.remember = (_key, _comment, mappings) => void remembered.push(mappings);
    const { approvals, decisions } = withSenders({ admission, askOperator: operator.ask, busy: false });
    approvals.authorize(3, "127.0.0.1:5002", KEY_C, "127.0.0.1", ["dns", "wg"]);
    await flush();
    expect(operator.questions.map((q) => q.question.mappings)).toEqual([["dns", "wg"]]);
    operator.questions[0].answer.resolve(true);
    await flush();
    expect(decisions).toEqual([{ conn: 3, accepted: true, reason: undefined, mappings: ["dns", "wg"] }]);
    expect(remembered).toEqual([["dns", "wg"]]);
  });

  test("asking for every mapping: the question and the remembered line carry no restriction", async () => {
    const operator = scriptedOperator();
    const { approvals, decisions } = withSenders({
      admission: fakeAdmission(),
      askOperator: operator.ask,
      busy: false,
    });
    approvals.authorize(4, "127.0.0.1:5003", KEY_A, "127.0.0.1", ["dns", "ntp", "wg"]);
    await flush();
    expect(operator.questions[0].question).not.toHaveProperty("mappings");
    operator.questions[0].answer.resolve(true);
    await flush();
    expect(decisions[0]).toMatchObject({ accepted: true, mappings: undefined });
  });
});
