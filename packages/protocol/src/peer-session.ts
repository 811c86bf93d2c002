/**
 * One authenticated peer's session: its token and key, its connections (lanes) and their lane
 * picker, and — on the acceptor — which of this side's mappings it asked for and may serve. The
 * acceptor keeps one per admitted peer (several senders on one receiver, §18); the dialer keeps one.
 * A session outlives its connections for the resume grace period.
 */
import type { Settings } from "./config.js";
import { LanePicker } from "./lanes.js";
import type { Link } from "./link.js";
import type { LaneTotals } from "./stats.js";

export class PeerSession {
  /** The session's connections, open or still closing, in the order they opened. */
  links: Link[] = [];
  /** When the last connection was lost; the session is kept until lostAt + resumeGraceMs. */
  lostAt: number | undefined;
  /**
   * The acceptor's proof in the ACCEPT that started the session (not a resumed one): what a JOIN
   * proof is bound to (§16.1).
   */
  binding: Uint8Array = new Uint8Array(0);
  /** Which lane each datagram of this session goes out on (§16.3, §17). */
  readonly picker: LanePicker;
  /**
   * Acceptor: this side's mapping indexes the peer pairs with and may serve. Every mapping for a peer
   * without the Senders capability (it serves all of them, alone).
   */
  wants: ReadonlySet<number> = new Set();
  /** Acceptor: mappings the peer asked for and may not serve, with the reason it is told. */
  refused: ReadonlyMap<number, string> = new Map();
  /** Acceptor: mappings the peer asked for that this side no longer has, with the reason it is told. */
  removed: ReadonlyMap<number, string> = new Map();
  /** Acceptor: the mapping names the peer's key may serve (undefined: all), for mappings added later. */
  allowed: readonly string[] | undefined;
  /** Acceptor: what MAPPING_STATE last told the peer per mapping, so that only changes are sent. */
  readonly told = new Map<number, number>();
  /** The address of the session's latest connection (log lines name the peer by it). */
  peer = "";
  /** Traffic of the session's connections that are gone (lane counters are per connection). */
  readonly pastTraffic = { datagramsSent: 0, datagramsReceived: 0 };
  /** The IP address the peer connected from when it was admitted (re-checked at a reload, from=). */
  source: string | undefined;

  constructor(
    /** Issued by the acceptor; offered back by the dialer to resume. */
    readonly token: Uint8Array,
    /** The peer's key (key mode): only the same key may resume or join. */
    readonly peerKey: Uint8Array,
    /**
     * The peer speaks MAPPING_STATE and may serve a subset (both HELLOs set Senders, §18); without
     * it, the session follows the one-peer rules of §7.
     */
    readonly partial: boolean,
    settings: Settings,
    totals: LaneTotals,
  ) {
    this.picker = new LanePicker(() => this.links, settings, totals);
  }

  /** Makes `link` one of the session's connections. */
  add(link: Link): void {
    this.links.push(link);
    link.session = this;
    this.peer = link.peer;
    this.lostAt = undefined;
    this.picker.lanesChanged();
  }

  /** Forgets `link` (reported gone), keeping its traffic in the session's totals. */
  remove(link: Link): void {
    if (!this.links.includes(link)) return;
    this.links = this.links.filter((other) => other !== link);
    this.pastTraffic.datagramsSent += link.counters.datagramsSent;
    this.pastTraffic.datagramsReceived += link.counters.datagramsReceived;
    this.picker.lanesChanged();
  }

  /** The session's first open connection (control frames that belong to no flow go there). */
  get openLink(): Link | undefined {
    for (const link of this.links) if (link.state === "open") return link;
    return undefined;
  }

  get openLanes(): number {
    let n = 0;
    for (const link of this.links) if (link.state === "open") n++;
    return n;
  }

  /**
   * Whether the peer is connected and heard from lately: an open connection that received something
   * within 1.5 keepalive intervals. One silent for longer is presumed half-open (its host vanished).
   */
  live(now: number, keepaliveMs: number): boolean {
    for (const link of this.links) {
      if (link.state === "open" && now - link.lastReceived <= keepaliveMs * 1.5) return true;
    }
    return false;
  }

  /** Datagrams sent to and received from the peer over the session's life. */
  get traffic(): { datagramsSent: number; datagramsReceived: number } {
    let { datagramsSent, datagramsReceived } = this.pastTraffic;
    for (const link of this.links) {
      datagramsSent += link.counters.datagramsSent;
      datagramsReceived += link.counters.datagramsReceived;
    }
    return { datagramsSent, datagramsReceived };
  }
}
