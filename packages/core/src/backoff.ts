/**
 * The dialer's retry delays: capped exponential backoff with jitter (half to all of the step), so a
 * fleet of senders restarted together does not reconnect in lockstep. A success starts over; a
 * configuration mismatch (both sides must be changed by a person) jumps to the slowest pace.
 */
export interface BackoffOptions {
  /** First delay and cap, in ms. */
  initialMs?: number;
  maxMs?: number;
  /** Uniform in [0, 1): injectable for tests. */
  random?: () => number;
}

/** Failures after which the delay is the cap whatever the initial delay (2^20 × initial). */
const SLOWEST_STEP = 20;

export class Backoff {
  private failures = 0;
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly random: () => number;

  constructor(options: BackoffOptions = {}) {
    this.initialMs = options.initialMs ?? 250;
    this.maxMs = options.maxMs ?? 30_000;
    this.random = options.random ?? Math.random;
  }

  /** How many attempts failed since the last success. */
  get attempts(): number {
    return this.failures;
  }

  /** The delay before the next attempt, in ms; counts a failure. */
  next(): number {
    const step = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.failures, SLOWEST_STEP));
    this.failures++;
    return Math.round(step * (0.5 + this.random() * 0.5));
  }

  /** From now on, retry at the slowest pace (until a success). */
  slowest(): void {
    this.failures = Math.max(this.failures, SLOWEST_STEP);
  }

  reset(): void {
    this.failures = 0;
  }
}
