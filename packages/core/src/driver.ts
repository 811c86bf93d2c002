/**
 * Drives one protocol machine with real time and real connections: feeds it inputs, drains its
 * outputs, coalesces each connection's frames into one write per event-loop turn, honours
 * backpressure, and keeps a single timer armed for the machine's next deadline.
 * Role-specific outputs (datagrams, flow sockets, operator prompts) go to the role's handler.
 */
import type { ConnectionOutput, ReceiverMachine, SenderMachine } from "@mcudpt/protocol";
import { messageOf } from "./errors.js";
import type { Logger } from "./logger.js";
import type { TcpConnection, TcpHandlers } from "./transport.js";

type Machine = ReceiverMachine | SenderMachine;
/** The outputs of machine M that the driver does not act on itself: the role's, and the peer link's. */
export type RoleOutput<M extends Machine> = Exclude<
  NonNullable<ReturnType<M["poll"]>>,
  { kind: "transmit" } | { kind: "log" }
>;
export type CloseOutput = Extract<ConnectionOutput, { kind: "close-connection" }>;

/** How long a closed connection may take to deliver its goodbye before it is destroyed. */
const END_LINGER_MS = 2_000;

/** Monotonic milliseconds: wall-clock jumps must not expire flows or keepalives. */
export const now = (): number => performance.now();

export class MachineDriver<M extends Machine = Machine> {
  private readonly connections = new Map<number, TcpConnection>();
  private readonly dirty = new Set<number>();
  private readonly closing = new Set<number>();
  private nextConnId = 1;
  private flushScheduled = false;
  /** A re-arm of the timer is scheduled for the end of this turn (see drain()). */
  private armScheduled = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private timerAt = Number.POSITIVE_INFINITY;
  private stopped = false;

  /**
   * @param onRoleOutput gets each role-specific output, in order.
   * @param onDrained runs after every drain, once the machine has nothing more to say: where the
   *   role sends the datagrams it batched from this drain's outputs (one sendmmsg on Bun), still
   *   within the same callback, so batching costs no latency.
   */
  constructor(
    readonly machine: M,
    private readonly logger: Logger,
    /** Every output but transmit and log (close-connection too, after the driver acted on it). */
    private readonly onRoleOutput: (output: RoleOutput<M>) => void,
    private readonly onDrained: () => void = () => {},
  ) {}

  /**
   * Registers a TCP connection with the machine and returns the handlers to install on it.
   * `register` tells the machine about it (connect()) once the id is known.
   */
  attach(connection: TcpConnection, register: (conn: number) => void): TcpHandlers {
    const conn = this.nextConnId++;
    this.connections.set(conn, connection);
    this.guard(() => register(conn));
    return this.handlersFor(conn);
  }

  /** Handlers for a connection id reserved with reserveId() before the connection exists (dialing). */
  handlersFor(conn: number): TcpHandlers {
    return {
      onData: (data) => this.guard(() => this.machine.session.receive(conn, data, now())),
      onDrain: () => this.guard(() => this.machine.session.setBlocked(conn, false)),
      onClose: () => {
        this.connections.delete(conn);
        this.dirty.delete(conn);
        this.closing.delete(conn);
        this.guard(() => this.machine.session.disconnected(conn, now()));
      },
    };
  }

  reserveId(): number {
    return this.nextConnId++;
  }

  bind(conn: number, connection: TcpConnection): void {
    this.connections.set(conn, connection);
  }

  /** Runs an input against the machine, then drains what it produced. Never throws. */
  guard(input: () => void): void {
    try {
      input();
      this.drain();
    } catch (error) {
      this.logger.log("error", `internal error: ${(error as Error)?.stack ?? messageOf(error)}`);
    }
  }

  private drain(): void {
    const machine = this.machine;
    for (let output = machine.poll(); output !== undefined; output = machine.poll()) {
      if (output.kind === "transmit") {
        this.dirty.add(output.conn);
        this.scheduleFlush();
      } else if (output.kind === "log") {
        this.logger.log(output.level, output.message);
      } else {
        if (output.kind === "close-connection") {
          this.closing.add(output.conn);
          this.dirty.add(output.conn);
          this.scheduleFlush();
        }
        this.onRoleOutput(output as RoleOutput<M>);
      }
    }
    this.onDrained();
    // nextTimeout() walks the sessions, connections and the oldest flows: once per turn is enough.
    // A pending flush re-arms the timer (its own drain() runs with no flush scheduled); without one
    // (nothing to write, or the connection backed up while a flood comes in) a turn's first input
    // schedules the re-arm, and the others of the turn skip it.
    if (!this.flushScheduled) this.armSoon();
  }

  private armSoon(): void {
    if (this.armScheduled) return;
    this.armScheduled = true;
    setImmediate(() => {
      this.armScheduled = false;
      if (!this.flushScheduled) this.armTimer();
    });
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // setImmediate runs after the I/O callbacks of this turn: every datagram that arrived in the turn
    // is in the buffer by then, and goes out in one write.
    setImmediate(() => this.flush());
  }

  /** Writes each dirty connection's coalesced bytes; ends connections the machine closed. */
  flush(): void {
    this.flushScheduled = false;
    for (const conn of this.dirty) {
      const connection = this.connections.get(conn);
      const bytes = this.machine.session.takeTransmit(conn);
      if (!connection) continue;
      if (bytes !== undefined) {
        if (!connection.write(bytes)) this.machine.session.setBlocked(conn, true);
        else if (connection.copiesWrites) this.machine.session.transmitCopied(conn);
      }
      if (this.closing.has(conn)) {
        this.closing.delete(conn);
        connection.end();
        // end() waits for the peer to take our last bytes; a peer that stopped reading (a vanished
        // host) would hold the socket and its buffer until TCP gives up, minutes later.
        const linger = setTimeout(() => {
          if (this.connections.get(conn) === connection) connection.destroy();
        }, END_LINGER_MS);
        linger.unref?.();
      }
    }
    this.dirty.clear();
    // setBlocked(false) above may have produced outputs.
    this.drain();
  }

  private armTimer(): void {
    if (this.stopped) return;
    const at = this.machine.nextTimeout();
    if (at === undefined || at >= this.timerAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    // Whole milliseconds, rounded up: a timer asked for 0.3 ms may fire at once (Bun), and re-arming
    // it for what is left would spin until the deadline (the tail-loss nudge is due 1 ms after a write).
    const delay = at - now();
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.timerAt = Number.POSITIVE_INFINITY;
        this.guard(() => this.machine.tick(now()));
      },
      delay <= 0 ? 0 : Math.min(Math.ceil(delay), 2_147_483_647),
    );
  }

  /** Flushes goodbyes, ends every connection and stops the timer. */
  stop(): void {
    this.flush();
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const connection of this.connections.values()) connection.end();
  }

  /** Destroys connections that did not close after stop(). */
  destroyAll(): void {
    for (const connection of this.connections.values()) connection.destroy();
    this.connections.clear();
  }

  get openConnections(): number {
    return this.connections.size;
  }
}
