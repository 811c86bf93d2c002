/**
 * The duplicate window of one flow and direction (PROTOCOL.md §17): sequence numbers are u32 and
 * wrap, compared as serial numbers (RFC 1982: b is newer than a when (b − a) mod 2³² is in 1..2³¹−1).
 * The newest number seen and a bitmap of the WINDOW numbers below it tell a first copy (delivered)
 * from a duplicate (dropped); a number further back than the window is dropped too, never delivered,
 * since whether its twin was delivered is no longer known.
 */
export const DUPLICATE_WINDOW = 1024;

export type Verdict = "new" | "duplicate" | "late";

export class DuplicateWindow {
  private top = 0;
  private started = false;
  /** Bit i set: number top − i was seen (i < DUPLICATE_WINDOW). */
  private readonly seen = new Uint32Array(DUPLICATE_WINDOW / 32);

  check(seq: number): Verdict {
    seq >>>= 0;
    if (!this.started) {
      this.started = true;
      this.top = seq;
      this.seen.fill(0);
      this.seen[0] = 1;
      return "new";
    }
    const ahead = (seq - this.top) >>> 0;
    if (ahead !== 0 && ahead < 0x80000000) {
      this.shift(ahead);
      this.top = seq;
      this.seen[0] |= 1;
      return "new";
    }
    const behind = (this.top - seq) >>> 0;
    if (behind >= DUPLICATE_WINDOW) return "late";
    const word = behind >>> 5;
    const bit = 1 << (behind & 31);
    if ((this.seen[word] & bit) !== 0) return "duplicate";
    this.seen[word] |= bit;
    return "new";
  }

  /** Moves the window up by `n`: bit i becomes bit i + n. */
  private shift(n: number): void {
    const seen = this.seen;
    if (n >= DUPLICATE_WINDOW) {
      seen.fill(0);
      return;
    }
    const words = n >>> 5;
    const bits = n & 31;
    for (let i = seen.length - 1; i >= 0; i--) {
      const from = i - words;
      let value = from >= 0 ? seen[from] << bits : 0;
      if (bits !== 0 && from - 1 >= 0) value |= seen[from - 1] >>> (32 - bits);
      seen[i] = value >>> 0;
    }
  }
}
