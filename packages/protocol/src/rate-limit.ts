/**
 * Token buckets per source address, for the public UDP port: a spoofed flood can make the receiver
 * open flows (and so make the private service answer someone) only at a bounded rate per source.
 * Memory is bounded too: past `maxSources` the least recently seen source is forgotten, which can only
 * make the limiter more lenient toward that one source, never hold more state.
 */
export interface RateLimitConfig {
  /** Tokens added per second. */
  perSecond: number;
  /** Bucket size: how many may be spent at once after a quiet spell. */
  burst: number;
  maxSources?: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

export class SourceRateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly maxSources: number;

  constructor(private config: RateLimitConfig) {
    this.maxSources = config.maxSources ?? 16_384;
  }

  /** New rates (a reload): each source keeps its bucket, refilled at the new rate, capped at the new burst. */
  setRate(perSecond: number, burst: number): void {
    this.config = { ...this.config, perSecond, burst };
  }

  /** Spends one token of `source`'s bucket; false when it is empty. */
  allow(source: string, now: number): boolean {
    const { perSecond, burst } = this.config;
    let bucket = this.buckets.get(source);
    if (bucket === undefined) {
      if (this.buckets.size >= this.maxSources) {
        const oldest = this.buckets.keys().next().value as string;
        this.buckets.delete(oldest);
      }
      bucket = { tokens: burst, at: now };
    } else {
      this.buckets.delete(source); // re-inserted below: Map order is least recently seen first
      bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * perSecond);
      bucket.at = now;
    }
    this.buckets.set(source, bucket);
    // Refills accumulate in floating point: ten 0.1-token refills must still buy a whole token.
    if (bucket.tokens < 1 - 1e-9) return false;
    bucket.tokens -= 1;
    return true;
  }

  get size(): number {
    return this.buckets.size;
  }
}
