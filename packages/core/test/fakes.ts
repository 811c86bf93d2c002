/**
 * Test doubles shared by the core's unit tests: a manual clock (time moves only when a test says so),
 * a recording logger, and a promise the test settles by hand. No real timers, no sockets.
 */
import type { LogLevel } from "@mcudpt/protocol";
import type { Clock } from "../src/clock.ts";
import type { Logger } from "../src/logger.ts";

interface Timer {
  id: number;
  at: number;
  ms: number;
  callback: () => void;
}

/** A Clock whose time and timers move only through advance(). */
export class FakeClock implements Clock {
  private time: number;
  private nextId = 1;
  private readonly timers: Timer[] = [];
  /** Every delay ever passed to setTimeout, in order. */
  readonly delays: number[] = [];

  constructor(start = 1_000) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const timer = { id: this.nextId++, at: this.time + ms, ms, callback };
    this.timers.push(timer);
    this.delays.push(ms);
    return timer.id;
  }

  clearTimeout(handle: unknown): void {
    const index = this.timers.findIndex((t) => t.id === handle);
    if (index >= 0) this.timers.splice(index, 1);
  }

  /** Timers armed and not yet run or cleared. */
  get pending(): number {
    return this.timers.length;
  }

  /** When the earliest armed timer is due, if any. */
  get nextAt(): number | undefined {
    return this.timers.reduce<number | undefined>(
      (min, t) => (min === undefined || t.at < min ? t.at : min),
      undefined,
    );
  }

  /** Moves time forward by `ms`, running every timer due on the way, in order (timers they arm too). */
  advance(ms: number): void {
    const target = this.time + ms;
    for (;;) {
      let next: Timer | undefined;
      for (const t of this.timers) if (t.at <= target && (next === undefined || t.at < next.at)) next = t;
      if (!next) break;
      this.timers.splice(this.timers.indexOf(next), 1);
      this.time = Math.max(this.time, next.at);
      next.callback();
    }
    this.time = target;
  }

  /** Runs the earliest timer now (moving time to it); false when none is armed. */
  runNext(): boolean {
    const at = this.nextAt;
    if (at === undefined) return false;
    this.advance(Math.max(0, at - this.time));
    return true;
  }
}

export interface LogEntry {
  level: LogLevel;
  message: string;
}

export function recordingLogger(): Logger & { entries: LogEntry[]; lines(level?: LogLevel): string[] } {
  const entries: LogEntry[] = [];
  return {
    entries,
    log: (level, message) => entries.push({ level, message }),
    lines: (level) => entries.filter((e) => level === undefined || e.level === level).map((e) => e.message),
  };
}

export interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * Lets every queued microtask and promise continuation run (a macrotask turn: setImmediate), so code
 * awaiting already-settled promises has moved on. Not a timing wait: nothing depends on how long it takes.
 */
export function settle(turns = 1): Promise<void> {
  let p = Promise.resolve();
  for (let i = 0; i < turns; i++) p = p.then(() => new Promise<void>((r) => setImmediate(r)));
  return p;
}

/** An Error carrying a Node errno code, as transports reject with. */
export function errno(code: string, message = `${code}: failed`): NodeJS.ErrnoException {
  const error = new Error(message) as NodeJS.ErrnoException;
  error.code = code;
  return error;
}
