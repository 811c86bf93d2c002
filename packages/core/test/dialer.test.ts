/**
 * The dialing side (src/dialer.ts): PeerKeyChecker over a fake PeerPins, and dial() driving a real
 * MachineDriver over a real SenderMachine through a fake Transport. The retry timer runs on a manual
 * clock; a TCP connection either fails at once or reaches a real ReceiverMachine in memory, so the
 * handshake, an ACCEPT or a CLOSE code are the protocol's own. No sockets, no real waits: the tests
 * step the event loop turn by turn until what they expect happened (a bounded number of turns).
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { CloseCode, type MappingConfig, ReceiverMachine, SenderMachine, type SenderOutput } from "@mcudpt/protocol";
import { nodeCrypto } from "../src/crypto.ts";
import { type Dialer, dial, PeerKeyChecker } from "../src/dialer.ts";
import { MachineDriver, now } from "../src/driver.ts";
import { UserError } from "../src/errors.ts";
import { fingerprint, generateKeyPair, identityFromPem, type LoadedIdentity } from "../src/keys.ts";
import type { DialerTlsOptions } from "../src/tls-peer.ts";
import type { ConnectOptions, TcpConnection, TcpHandlers, Transport } from "../src/transport.ts";
import { TLS_CERT_REFUSED } from "../src/transport.ts";
import type { PeerPins, PinVerdict } from "../src/trust.ts";
import { errno, FakeClock, recordingLogger, settle } from "./fakes.ts";

const identity = (): LoadedIdentity => identityFromPem(generateKeyPair("test").privateKeyPem);
const RECEIVER_KEY = identity();
const SENDER_KEY = identity();

// ---------------------------------------------------------------------------------------------------
// PeerKeyChecker

function fakePins(answer: (peer: string, publicKey: Uint8Array, record?: boolean) => PinVerdict) {
  const calls: Array<{ peer: string; record?: boolean }> = [];
  const pins: PeerPins = {
    check(peer, publicKey, record) {
      calls.push({ peer, record });
      return answer(peer, publicKey, record);
    },
  };
  return { pins, calls };
}

describe("PeerKeyChecker", () => {
  const key = RECEIVER_KEY.publicKey;
  const print = fingerprint(key);

  test("without pins every key goes on", () => {
    const logger = recordingLogger();
    const checker = new PeerKeyChecker(undefined, logger, "receiver");
    expect(checker.check(key, "192.0.2.1:4433", false)).toBeUndefined();
    expect(checker.check(key, "192.0.2.1:4433", true)).toBeUndefined();
    expect(checker.refused).toBeUndefined();
    expect(logger.entries).toEqual([]);
  });

  test("a claimed key (at HELLO) is only compared: record is false, a new key is not remembered nor logged", () => {
    const logger = recordingLogger();
    const { pins, calls } = fakePins(() => ({ verdict: "new" }));
    const checker = new PeerKeyChecker(pins, logger, "receiver");
    expect(checker.check(key, "192.0.2.1:4433", false)).toBeUndefined();
    expect(calls).toEqual([{ peer: "192.0.2.1:4433", record: false }]);
    expect(checker.refused).toBeUndefined();
    expect(logger.entries).toEqual([]);
  });

  test("a proven key (at ACCEPT) may be recorded, and its pinning is logged with the file", () => {
    const logger = recordingLogger();
    const { pins, calls } = fakePins(() => ({ verdict: "added", path: "/home/op/.config/mcudpt/known_receivers" }));
    const checker = new PeerKeyChecker(pins, logger, "receiver");
    expect(checker.check(key, "192.0.2.1:4433", true)).toBeUndefined();
    expect(calls).toEqual([{ peer: "192.0.2.1:4433", record: true }]);
    expect(logger.entries).toHaveLength(1);
    expect(logger.entries[0].level).toBe("info");
    expect(logger.entries[0].message).toContain(print);
    expect(logger.entries[0].message).toContain("/home/op/.config/mcudpt/known_receivers");
    expect(logger.entries[0].message).toContain("receiver 192.0.2.1:4433");
  });

  test("a trusted key goes on, silently", () => {
    const logger = recordingLogger();
    const checker = new PeerKeyChecker(fakePins(() => ({ verdict: "trusted" })).pins, logger, "receiver");
    expect(checker.check(key, "p", true)).toBeUndefined();
    expect(checker.refused).toBeUndefined();
    expect(logger.entries).toEqual([]);
  });

  test("a changed key: a short reason for the peer (no path); the detail is kept in `refused`", () => {
    const detail =
      "KEY CHANGED: 192.0.2.1:4433 now presents X, but /home/op/.config/mcudpt/known_receivers line 3 pins Y";
    const checker = new PeerKeyChecker(
      fakePins(() => ({ verdict: "changed", reason: detail })).pins,
      recordingLogger(),
      "receiver",
    );
    const reason = checker.check(key, "192.0.2.1:4433", false);
    expect(reason).toBe(`key ${print} is not the one pinned for this address`);
    expect(reason).not.toContain("/home");
    expect(reason).not.toContain("known_receivers");
    expect(checker.refused).toBe(detail);
  });

  test("pins that throw (an unreadable file): refused, with the error kept locally and a generic reason", () => {
    const checker = new PeerKeyChecker(
      fakePins(() => {
        throw new UserError("cannot read /home/op/.config/mcudpt/known_receivers: EACCES");
      }).pins,
      recordingLogger(),
      "receiver",
    );
    const reason = checker.check(key, "192.0.2.1:4433", true);
    expect(reason).toBe("this side cannot check the key (a local error)");
    expect(checker.refused).toBe("cannot read /home/op/.config/mcudpt/known_receivers: EACCES");
  });
});

// ---------------------------------------------------------------------------------------------------
// dial(): a fake transport, and a receiver machine at the other end of each connection

/** What the next connectTcp does. */
type Script =
  | { kind: "refuse"; error?: unknown }
  /** Connects to a fresh ReceiverMachine with these mappings (a real handshake). */
  | { kind: "receiver"; mappings?: MappingConfig[] }
  /** Connects to nobody: bytes vanish; `peerCertificate` as given (TLS tests). */
  | { kind: "silent"; peerCertificate?: Uint8Array };

class FakeConnection implements TcpConnection {
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly written: Uint8Array[] = [];
  ended = false;
  destroyed = false;
  private closed = false;
  /** The receiver at the other end, if any. */
  peer?: ReceiverPeer;
  /** onClose a macrotask after the close (node:net) rather than a microtask (transport-bun). */
  closeLater = false;

  constructor(
    readonly options: ConnectOptions,
    readonly peerCertificate?: Uint8Array,
  ) {
    this.remoteAddress = options.host;
    this.remotePort = options.port;
  }

  get handlers(): TcpHandlers {
    return this.options.handlers;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  write(data: Uint8Array): boolean {
    if (this.closed) return true;
    this.written.push(data.slice());
    const peer = this.peer;
    if (peer) queueMicrotask(() => peer.receive(data));
    return true;
  }

  end(): void {
    this.ended = true;
    this.lose();
  }

  destroy(): void {
    this.destroyed = true;
    this.lose();
  }

  /**
   * The connection is gone (either end): both sides hear of it, once. onClose comes a microtask later,
   * as transport-bun delivers it (its close fires inside end()/destroy(), the handler is deferred with
   * queueMicrotask), or with `closeLater` a macrotask later, as node:net's 'close' event does.
   */
  lose(error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    const close = () => {
      this.peer?.disconnected();
      this.handlers.onClose(error);
    };
    if (this.closeLater) setImmediate(close);
    else queueMicrotask(close);
  }
}

/** A ReceiverMachine accepting one connection, approving any key, replying through microtasks. */
class ReceiverPeer {
  static readonly CONN = 1;
  readonly machine: ReceiverMachine;
  readonly logs: string[] = [];
  readonly closeCodes: number[] = [];

  constructor(
    private readonly connection: FakeConnection,
    mappings: MappingConfig[] | undefined,
  ) {
    this.machine = new ReceiverMachine({ identity: RECEIVER_KEY, mappings }, nodeCrypto);
    this.machine.session.accept(ReceiverPeer.CONN, "sender-peer", now(), "198.51.100.1");
    this.pump();
  }

  /** Bytes written before the connection closed (they arrive before the close). */
  receive(data: Uint8Array): void {
    this.machine.session.receive(ReceiverPeer.CONN, data, now());
    this.pump();
  }

  disconnected(): void {
    this.machine.session.disconnected(ReceiverPeer.CONN, now());
    this.pump();
  }

  private pump(): void {
    for (let o = this.machine.poll(); o !== undefined; o = this.machine.poll()) {
      if (o.kind === "log") this.logs.push(o.message);
      else if (o.kind === "transmit" || o.kind === "close-connection") {
        const bytes = this.machine.session.takeTransmit(ReceiverPeer.CONN);
        if (bytes && !this.connection.isClosed) {
          const copy = bytes.slice();
          queueMicrotask(() => {
            if (!this.connection.isClosed) this.connection.handlers.onData(copy);
          });
        }
        if (o.kind === "close-connection") {
          this.closeCodes.push(o.code);
          queueMicrotask(() => this.connection.lose());
        }
      } else if (o.kind === "authorize-peer") {
        this.machine.session.approve(o.conn, true, now());
      }
    }
  }
}

class FakeTcpTransport implements Transport {
  readonly name = "node" as const;
  readonly scripts: Script[] = [];
  /** Used when no script is queued. */
  fallback: Script = { kind: "refuse" };
  /** Connections deliver onClose a macrotask late (node:net) instead of a microtask (transport-bun). */
  closeLater = false;
  readonly attempts: ConnectOptions[] = [];
  readonly connections: FakeConnection[] = [];

  bindUdp(): never {
    throw new Error("not used");
  }

  listenTcp(): never {
    throw new Error("not used");
  }

  async connectTcp(options: ConnectOptions): Promise<TcpConnection> {
    this.attempts.push(options);
    const script = this.scripts.shift() ?? this.fallback;
    if (script.kind === "refuse") throw script.error ?? errno("ECONNREFUSED", "connect ECONNREFUSED");
    const connection = new FakeConnection(options, script.kind === "silent" ? script.peerCertificate : undefined);
    connection.closeLater = this.closeLater;
    this.connections.push(connection);
    // The receiver's HELLO may arrive before connectTcp resolves: dial() must keep those bytes.
    if (script.kind === "receiver") connection.peer = new ReceiverPeer(connection, script.mappings);
    return connection;
  }
}

interface Harness {
  dialer: Dialer;
  transport: FakeTcpTransport;
  clock: FakeClock;
  logger: ReturnType<typeof recordingLogger>;
  driver: MachineDriver<SenderMachine>;
  keyCheck: PeerKeyChecker;
  /** Every close-connection output of the sender machine. */
  closes: Array<{ conn: number; code: number; byPeer: boolean }>;
  accepted: number;
  fatal: string | undefined;
}

const harnesses: Harness[] = [];
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);
beforeEach(() => {
  unhandled.length = 0;
  process.on("unhandledRejection", onUnhandled);
});
afterEach(() => {
  process.off("unhandledRejection", onUnhandled);
  for (const h of harnesses.splice(0)) {
    h.dialer.stop();
    h.driver.stop();
    h.driver.destroyAll();
  }
});

function startDialer(
  options: {
    scripts?: Script[];
    mappings?: MappingConfig[];
    pins?: PeerPins;
    tls?: DialerTlsOptions;
    /** Route the machine's `accepted` output to dialer.accepted() (as peer-link does). */
    routeAccepted?: boolean;
    /** onClose timing of the connections: see FakeConnection.lose. */
    closeLater?: boolean;
  } = {},
): Harness {
  const transport = new FakeTcpTransport();
  transport.closeLater = options.closeLater ?? false;
  transport.scripts.push(...(options.scripts ?? []));
  const clock = new FakeClock();
  const logger = recordingLogger();
  const keyCheck = new PeerKeyChecker(options.pins, logger, "receiver");
  const machine = new SenderMachine(
    { identity: SENDER_KEY, checkPeerKey: keyCheck.check, mappings: options.mappings },
    nodeCrypto,
  );
  const h = { transport, clock, logger, keyCheck, closes: [], accepted: 0, fatal: undefined } as unknown as Harness;
  const driver = new MachineDriver<SenderMachine>(machine, logger, (output) => {
    const o = output as SenderOutput;
    if (o.kind === "accepted") {
      h.accepted++;
      if (options.routeAccepted !== false) h.dialer.accepted();
    } else if (o.kind === "close-connection") {
      h.closes.push({ conn: o.conn, code: o.code, byPeer: o.byPeer });
      h.dialer.closed(o.conn, o.code);
    }
  });
  h.driver = driver;
  h.dialer = dial({
    transport,
    logger,
    driver,
    peerName: "receiver",
    remote: { host: "127.0.0.1", port: 4433 },
    keyCheck,
    tls: options.tls,
    reconnect: { initialMs: 1000, maxMs: 8000 },
    clock,
  });
  void h.dialer.fatal.then((why) => {
    h.fatal = why;
  });
  harnesses.push(h);
  return h;
}

/** Steps the event loop until `done` holds (at most `turns` turns: a hang is a failure, not a wait). */
async function until(done: () => boolean, what: string, turns = 200): Promise<void> {
  for (let i = 0; i < turns && !done(); i++) await settle();
  if (!done()) throw new Error(`never happened: ${what}`);
}

/** The retry timer is armed (the attempt in flight has ended). */
const retryArmed = (h: Harness) => () => h.clock.pending > 0;

/** The delay of the retry armed last, checked to lie in the jitter band of `step`: [step/2, step]. */
function expectBand(delay: number, step: number): void {
  expect(delay).toBeGreaterThanOrEqual(step / 2);
  expect(delay).toBeLessThanOrEqual(step);
}

describe("dial(): retries", () => {
  test("each failed attempt waits twice as long (with jitter), up to the cap; only the timer starts the next", async () => {
    const h = startDialer();
    const steps = [1000, 2000, 4000, 8000, 8000, 8000];
    for (const [i, step] of steps.entries()) {
      await until(retryArmed(h), `retry ${i + 1} armed`);
      expect(h.transport.attempts).toHaveLength(i + 1);
      expect(h.clock.delays).toHaveLength(i + 1);
      expectBand(h.clock.delays[i], step);
      await settle(3);
      expect(h.transport.attempts).toHaveLength(i + 1); // nothing until the timer fires
      h.clock.runNext();
    }
    const retries = h.logger.entries.filter((e) => e.message.includes("reconnecting in"));
    expect(retries[0].level).toBe("info");
    expect(retries.slice(1).every((e) => e.level === "warn")).toBe(true);
    expect(retries[0].message).toContain("cannot connect to receiver 127.0.0.1:4433");
    expect(h.fatal).toBeUndefined();
    expect(unhandled).toEqual([]);
  });

  test("the connect attempt targets the remote with the timeout, and no TLS without tls options", async () => {
    const h = startDialer();
    await until(retryArmed(h), "first attempt over");
    expect(h.transport.attempts[0].host).toBe("127.0.0.1");
    expect(h.transport.attempts[0].port).toBe(4433);
    expect(h.transport.attempts[0].timeoutMs).toBe(10_000);
    expect(h.transport.attempts[0].tls).toBeUndefined();
  });

  test("stop() cancels the armed retry: no further attempt", async () => {
    const h = startDialer();
    await until(retryArmed(h), "retry armed");
    h.dialer.stop();
    expect(h.clock.pending).toBe(0);
    h.clock.advance(60_000);
    await settle(3);
    expect(h.transport.attempts).toHaveLength(1);
  });

  test("the backoff starts over once the machine accepted a connection", async () => {
    const h = startDialer({
      scripts: [{ kind: "refuse" }, { kind: "refuse" }, { kind: "refuse" }, { kind: "receiver" }],
    });
    for (let i = 0; i < 3; i++) {
      await until(retryArmed(h), `retry ${i + 1} armed`);
      h.clock.runNext();
    }
    await until(() => h.accepted === 1, "the receiver accepted");
    expect(h.transport.connections).toHaveLength(1);
    expect(h.logger.lines("info")).toContain("connected to receiver 127.0.0.1:4433");
    h.transport.connections[0].lose(new Error("connection reset"));
    await until(retryArmed(h), "retry after the lost connection");
    // Three failures would make this the fourth step (8 s); after the success it is the first again.
    expectBand(h.clock.delays[3], 1000);
    expect(h.dialer.reconnects).toBe(0);
  });

  test("a connection lost before the handshake completed does not reset the backoff", async () => {
    const h = startDialer({
      scripts: [{ kind: "refuse" }, { kind: "refuse" }, { kind: "refuse" }, { kind: "silent" }],
    });
    for (let i = 0; i < 3; i++) {
      await until(retryArmed(h), `retry ${i + 1} armed`);
      h.clock.runNext();
    }
    await until(() => h.transport.connections.length === 1, "connected");
    h.transport.connections[0].lose();
    await until(retryArmed(h), "retry after the lost connection");
    expectBand(h.clock.delays[3], 8000);
    expect(h.accepted).toBe(0);
  });

  test("an accepted() that is not routed leaves the backoff growing (the reset is accepted()'s doing)", async () => {
    const h = startDialer({
      scripts: [{ kind: "refuse" }, { kind: "refuse" }, { kind: "refuse" }, { kind: "receiver" }],
      routeAccepted: false,
    });
    for (let i = 0; i < 3; i++) {
      await until(retryArmed(h), `retry ${i + 1} armed`);
      h.clock.runNext();
    }
    await until(() => h.accepted === 1, "the receiver accepted");
    h.transport.connections[0].lose();
    await until(retryArmed(h), "retry after the lost connection");
    expectBand(h.clock.delays[3], 8000);
  });

  test("reconnects counts the connections after the first", async () => {
    const h = startDialer({ scripts: [{ kind: "receiver" }, { kind: "receiver" }, { kind: "receiver" }] });
    for (let i = 1; i <= 3; i++) {
      await until(() => h.accepted === i, `accepted ${i}`);
      h.transport.connections[i - 1].lose();
      await until(retryArmed(h), `retry ${i}`);
      if (i < 3) h.clock.runNext();
    }
    expect(h.dialer.reconnects).toBe(2);
  });
});

describe("dial(): a configuration mismatch", () => {
  test("a CLOSE with MappingMismatch (12) switches to the slowest pace, and stays there until a success", async () => {
    const h = startDialer({
      // No name in common (a sender serving some of the receiver's mappings is no mismatch, §18).
      mappings: [{ name: "dns" }, { name: "game" }],
      scripts: [{ kind: "receiver", mappings: [{ name: "ntp" }] }],
    });
    await until(retryArmed(h), "retry after the mismatch");
    expect(h.closes.map((c) => c.code)).toEqual([CloseCode.MappingMismatch]);
    expectBand(h.clock.delays[0], 8000); // the first retry, yet at the cap
    const line = h.logger.entries.find((e) => e.message.includes("reconnecting in"));
    expect(line?.message).toContain("configuration mismatch");
    // A plain failure next does not bring the pace back down.
    h.clock.runNext();
    await until(() => h.clock.pending > 0, "second retry");
    expectBand(h.clock.delays[1], 8000);
    const lines = h.logger.entries.filter((e) => e.message.includes("reconnecting in"));
    expect(lines[1].message).not.toContain("configuration mismatch");
  });

  test("matching mappings: the same close of the connection retries at the first step", async () => {
    const h = startDialer({
      mappings: [{ name: "dns" }],
      scripts: [{ kind: "receiver", mappings: [{ name: "dns" }] }],
    });
    await until(() => h.accepted === 1, "accepted");
    h.transport.connections[0].lose();
    await until(retryArmed(h), "retry");
    expectBand(h.clock.delays[0], 1000);
  });

  for (const code of [CloseCode.AuthMismatch, CloseCode.RoleConflict, CloseCode.MappingMismatch]) {
    test(`closed(conn, ${code}) on the current connection: slowest pace`, async () => {
      const h = startDialer({ scripts: [{ kind: "silent" }] });
      await until(() => h.transport.connections.length === 1, "connected");
      h.dialer.closed(currentConn(h), code);
      h.transport.connections[0].lose();
      await until(retryArmed(h), "retry");
      expectBand(h.clock.delays[0], 8000);
    });
  }

  test("another close code (Busy) keeps the usual pace", async () => {
    const h = startDialer({ scripts: [{ kind: "silent" }] });
    await until(() => h.transport.connections.length === 1, "connected");
    h.dialer.closed(currentConn(h), CloseCode.Busy);
    h.transport.connections[0].lose();
    await until(retryArmed(h), "retry");
    expectBand(h.clock.delays[0], 1000);
  });

  test("a mismatch code for another connection than the current one is ignored", async () => {
    const h = startDialer({ scripts: [{ kind: "silent" }] });
    await until(() => h.transport.connections.length === 1, "connected");
    h.dialer.closed(currentConn(h) + 100, CloseCode.MappingMismatch);
    h.transport.connections[0].lose();
    await until(retryArmed(h), "retry");
    expectBand(h.clock.delays[0], 1000);
  });
});

/**
 * The id dial() gave the connection: it reserves ids from the driver in order (1, 2, ...) and the
 * harness's driver serves no one else, so it is the number of connect attempts.
 */
function currentConn(h: Harness): number {
  return h.transport.attempts.length;
}

describe("dial(): refusals and local errors end in `fatal`", () => {
  const CERT = new Uint8Array([0x30, 0x82, 1, 2, 3, 4]);

  const userErrorCheck = (closeLater: boolean) =>
    startDialer({
      closeLater,
      scripts: [{ kind: "silent", peerCertificate: CERT }],
      tls: {
        onNewCertificate: () => {
          throw new UserError("cannot write /home/op/.config/mcudpt/known_receivers: EROFS");
        },
      },
    });

  for (const closeLater of [false, true]) {
    const timing = closeLater ? "onClose a macrotask later (node:net)" : "onClose a microtask later (transport-bun)";
    test(`a UserError from the TLS certificate check: fatal with its message, connection destroyed, no new attempt (${timing})`, async () => {
      const h = userErrorCheck(closeLater);
      await until(() => h.fatal !== undefined, "fatal");
      expect(h.fatal).toBe("cannot write /home/op/.config/mcudpt/known_receivers: EROFS");
      expect(h.transport.connections[0].destroyed).toBe(true);
      expect(h.logger.lines("error")).toContain("cannot write /home/op/.config/mcudpt/known_receivers: EROFS");
      h.clock.advance(60_000);
      await settle(3);
      expect(h.transport.attempts).toHaveLength(1);
      expect(unhandled).toEqual([]);
    });
  }

  test("a UserError from the TLS check, node:net close timing: no retry is armed or announced", async () => {
    const h = userErrorCheck(true);
    await until(() => h.fatal !== undefined, "fatal");
    await settle(3);
    expect(h.clock.pending).toBe(0);
    expect(h.logger.lines().filter((l) => l.includes("reconnecting in"))).toEqual([]);
  });

  // Was a bug: destroy() came before giveUp(), and transport-bun reports the close inside destroy()
  // (a microtask), so a retry was armed and announced before the fatal error.
  test("a UserError from the TLS check, transport-bun close timing: no retry is armed or announced", async () => {
    const h = userErrorCheck(false);
    await until(() => h.fatal !== undefined, "fatal");
    await settle(3);
    expect(h.clock.pending).toBe(0);
    expect(h.logger.lines().filter((l) => l.includes("reconnecting in"))).toEqual([]);
    expect(unhandled).toEqual([]);
  });

  test("a UserError from an async certificate prompt (a rejected promise) ends the same way", async () => {
    const h = startDialer({
      scripts: [{ kind: "silent", peerCertificate: CERT }],
      tls: { onNewCertificate: async () => Promise.reject(new UserError("no terminal to ask on")) },
    });
    await until(() => h.fatal !== undefined, "fatal");
    expect(h.fatal).toBe("no terminal to ask on");
    expect(h.transport.connections[0].destroyed).toBe(true);
    expect(unhandled).toEqual([]);
  });

  const internalErrorCheck = (closeLater: boolean) =>
    startDialer({
      closeLater,
      scripts: [{ kind: "silent", peerCertificate: CERT }],
      tls: {
        onNewCertificate: () => {
          throw new TypeError("a bug");
        },
      },
    });

  test("any other error thrown by the check is a retry logged as internal, not fatal (node:net close timing)", async () => {
    const h = internalErrorCheck(true);
    await until(retryArmed(h), "retry");
    await settle(3);
    expect(h.fatal).toBeUndefined();
    expect(h.transport.connections[0].destroyed).toBe(true);
    expect(h.logger.lines().some((l) => l.includes("internal error while") && l.includes("a bug"))).toBe(true);
    expect(h.clock.pending).toBe(1);
    expect(unhandled).toEqual([]);
  });

  test("any other error thrown by the check is a retry, not fatal (transport-bun close timing)", async () => {
    const h = internalErrorCheck(false);
    await until(retryArmed(h), "retry");
    await settle(3);
    expect(h.fatal).toBeUndefined();
    expect(h.clock.pending).toBe(1);
    expect(unhandled).toEqual([]);
  });

  // Was a bug (same place): the retry armed by the close swallowed the internal error's log line.
  test("an internal error thrown by the check is logged (transport-bun close timing)", async () => {
    const h = internalErrorCheck(false);
    await until(retryArmed(h), "retry");
    await settle(3);
    expect(h.logger.lines().some((l) => l.includes("internal error while") && l.includes("a bug"))).toBe(true);
  });

  test("a certificate the prompt declines: fatal, connection destroyed, the machine never told", async () => {
    const h = startDialer({
      scripts: [{ kind: "silent", peerCertificate: CERT }],
      tls: { onNewCertificate: () => false },
    });
    await until(() => h.fatal !== undefined, "fatal");
    expect(h.fatal).toContain("was not accepted");
    expect(h.transport.connections[0].destroyed).toBe(true);
    expect(h.transport.connections[0].written).toEqual([]); // no HELLO to an impostor
    expect(h.clock.pending).toBe(0);
  });

  test("a certificate the CA does not vouch for (TLS_CERT_REFUSED): fatal at once", async () => {
    const refusal = Object.assign(new Error("certificate signature failure"), { code: TLS_CERT_REFUSED });
    const h = startDialer({
      scripts: [{ kind: "refuse", error: refusal }],
      tls: { ca: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n" },
    });
    await until(() => h.fatal !== undefined, "fatal");
    expect(h.fatal).toContain("certificate signature failure");
    expect(h.clock.pending).toBe(0);
    expect(h.transport.attempts[0].tls?.ca).toContain("BEGIN CERTIFICATE");
  });

  test("pins that throw a UserError at the receiver's HELLO: the peer is told a short reason, dialing stops with the detail", async () => {
    const detail = "cannot read /home/op/.config/mcudpt/known_receivers: EACCES";
    const { pins } = fakePins(() => {
      throw new UserError(detail);
    });
    const h = startDialer({ pins, scripts: [{ kind: "receiver" }] });
    await until(() => h.fatal !== undefined, "fatal");
    expect(h.fatal).toBe(detail);
    expect(h.closes.map((c) => c.code)).toEqual([CloseCode.KeyRejected]);
    expect(h.accepted).toBe(0);
    const peer = h.transport.connections[0].peer as ReceiverPeer;
    const told = peer.logs.join("\n");
    expect(told).toContain("this side cannot check the key (a local error)");
    expect(told).not.toContain("known_receivers");
    expect(h.clock.pending).toBe(0);
    expect(h.transport.attempts).toHaveLength(1);
    expect(unhandled).toEqual([]);
  });

  test("a changed pinned key: fatal with the pins' detail; the receiver hears only the short reason", async () => {
    const detail = "KEY CHANGED: 127.0.0.1:4433 ... /home/op/.config/mcudpt/known_receivers line 1";
    const { pins } = fakePins(() => ({ verdict: "changed", reason: detail }));
    const h = startDialer({ pins, scripts: [{ kind: "receiver" }] });
    await until(() => h.fatal !== undefined, "fatal");
    expect(h.fatal).toBe(detail);
    const peer = h.transport.connections[0].peer as ReceiverPeer;
    const told = peer.logs.join("\n");
    expect(told).toContain("is not the one pinned for this address");
    expect(told).not.toContain("known_receivers");
  });

  test("pins that accept: the key is checked claimed at HELLO, then proven at ACCEPT", async () => {
    const { pins, calls } = fakePins((_p, _k, record) =>
      record ? { verdict: "added", path: "/tmp/kr" } : { verdict: "new" },
    );
    const h = startDialer({ pins, scripts: [{ kind: "receiver" }] });
    await until(() => h.accepted === 1, "accepted");
    expect(calls.map((c) => c.record)).toEqual([false, true]);
    expect(calls[0].peer).toBe("127.0.0.1:4433");
    expect(h.fatal).toBeUndefined();
  });
});
