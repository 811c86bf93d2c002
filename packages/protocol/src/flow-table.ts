/**
 * Flows by id, kept in least-recently-active order: a Map iterates in insertion order, so moving a flow
 * to the end on activity makes the first entry both the eviction candidate and the next to go idle.
 * Both are O(1), which keeps idle expiry and --max-flows cheap with tens of thousands of flows.
 */
export interface FlowBase {
  readonly id: number;
  lastActive: number;
}

export class FlowTable<F extends FlowBase> {
  private readonly byId = new Map<number, F>();
  /** The most recently touched flow: touching it again (a burst) skips the Map reshuffle. */
  private newest: F | undefined;

  get size(): number {
    return this.byId.size;
  }

  get(id: number): F | undefined {
    return this.byId.get(id);
  }

  has(id: number): boolean {
    return this.byId.has(id);
  }

  add(flow: F): void {
    this.byId.set(flow.id, flow);
    this.newest = flow;
  }

  touch(flow: F, now: number): void {
    flow.lastActive = now;
    if (this.newest === flow) return;
    this.byId.delete(flow.id);
    this.byId.set(flow.id, flow);
    this.newest = flow;
  }

  delete(id: number): F | undefined {
    const flow = this.byId.get(id);
    if (!flow) return undefined;
    this.byId.delete(id);
    if (this.newest === flow) this.newest = undefined;
    return flow;
  }

  /** Least recently active flow. */
  oldest(): F | undefined {
    for (const flow of this.byId.values()) return flow;
    return undefined;
  }

  values(): IterableIterator<F> {
    return this.byId.values();
  }

  clear(): void {
    this.byId.clear();
    this.newest = undefined;
  }
}

/**
 * Flows of several mappings: one LRU table per mapping (each mapping has its own idle timeout and flow
 * limit, so expiry and eviction look at that mapping's oldest flow) and one index by id across all of
 * them (DATA frames name only the flow id).
 */
export class MappedFlows<F extends FlowBase & { readonly mappingId: number }> {
  private readonly byId = new Map<number, F>();
  readonly tables: FlowTable<F>[];

  constructor(mappings: number) {
    this.tables = Array.from({ length: mappings }, () => new FlowTable<F>());
  }

  get size(): number {
    return this.byId.size;
  }

  /** A table for a mapping added while running (the next id). */
  addMapping(): void {
    this.tables.push(new FlowTable<F>());
  }

  get(id: number): F | undefined {
    return this.byId.get(id);
  }

  has(id: number): boolean {
    return this.byId.has(id);
  }

  add(flow: F): void {
    this.byId.set(flow.id, flow);
    this.tables[flow.mappingId].add(flow);
  }

  touch(flow: F, now: number): void {
    this.tables[flow.mappingId].touch(flow, now);
  }

  delete(flow: F): void {
    this.byId.delete(flow.id);
    this.tables[flow.mappingId].delete(flow.id);
  }

  values(): IterableIterator<F> {
    return this.byId.values();
  }

  clear(): void {
    this.byId.clear();
    for (const table of this.tables) table.clear();
  }
}
