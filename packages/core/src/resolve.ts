/**
 * Host name resolution. Bun's UDP sockets take only IP literals, so names are resolved here, once per
 * use with a short cache: a target whose address changes (DHCP, a restarted container) is followed.
 * node:dns works on both runtimes.
 */
import { lookup } from "node:dns/promises";
import { ipFamily } from "@mcudpt/protocol";

export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}

const CACHE_MS = 30_000;

export class Resolver {
  private readonly cache = new Map<string, { at: number; result: Promise<ResolvedAddress> }>();

  resolve(host: string): Promise<ResolvedAddress> {
    const literal = ipFamily(host);
    if (literal) return Promise.resolve({ address: host, family: literal });
    const now = Date.now();
    const cached = this.cache.get(host);
    if (cached && now - cached.at < CACHE_MS) return cached.result;
    const result = lookup(host).then(
      (r) => ({ address: r.address, family: r.family === 6 ? 6 : 4 }) as ResolvedAddress,
    );
    this.cache.set(host, { at: now, result });
    // A failure is not cached: the next flow retries.
    result.catch(() => this.cache.delete(host));
    return result;
  }
}
