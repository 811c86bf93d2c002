/**
 * The kernel's own per-socket UDP counters, for this process's sockets (Linux; node:fs only, so it
 * runs on every runtime). A datagram the kernel drops because a socket's receive buffer is full is
 * invisible to the application; `/proc/net/udp` and `/proc/net/udp6` count it (the `drops` column,
 * sk_drops: receive buffer full, bad checksum, socket filter) and show what waits in each queue.
 *
 * Those tables list every UDP socket of the network namespace; this process's are the ones whose
 * inode is the target of a `socket:[INODE]` link in /proc/self/fd. Rows are keyed by the local
 * address as formatHostPort writes it ("127.0.0.1:5353", "[::]:5353"): a socket's key is
 * formatHostPort(socket.address, socket.port) for a UdpSocket of either transport. An IPv4 client of
 * a socket bound on "::" (dual stack) is counted on that socket's udp6 row. Connected sockets have
 * the source address the kernel chose as local address (a socket bound on 0.0.0.0 and connected to
 * 127.0.0.1 shows 127.0.0.1), which is also what the transports report after connecting.
 *
 * Cost: the kernel serves these tables 4 KiB per read() and walks its hash table from the start for
 * each, so one read of the tables is quadratic in the namespace's UDP sockets: measured (Linux 6.18,
 * 2 cores) ~3 ms for 1,000 sockets, ~14 ms for 3,000, ~130 ms for 10,000. readUdpSocketStatsAsync
 * keeps that off the event loop (the reads run on the runtime's I/O threads). The /proc/self/fd scan
 * is cached: a descriptor is looked up again only when it is new or its socket left the tables.
 *
 * Where /proc is missing (macOS, Windows, a sandbox) both readers return an empty map; they never
 * throw.
 */
import { existsSync, promises as fsp, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { formatHostPort } from "./address.js";

export interface UdpSocketStats {
  /** The key: local address and port as formatHostPort writes them. */
  local: string;
  /** Local IP as our code writes it ("127.0.0.1", "::", "::ffff:127.0.0.1"). */
  address: string;
  port: number;
  /** The peer of a connected socket, formatHostPort form; undefined when unconnected. */
  remote?: string;
  /** Datagrams the kernel dropped for this socket since it was created. */
  drops: number;
  /** Bytes in the receive queue as the kernel accounts them (payload plus per-datagram overhead). */
  rxQueue: number;
  /** Bytes in the send queue, likewise. */
  txQueue: number;
  /** The socket's inode (the first one when several sockets share the key). */
  inode: number;
  /** How many sockets of this process share the key (SO_REUSEPORT): their counters are summed. */
  sockets: number;
}

interface Row {
  address: string;
  port: number;
  remote?: string;
  drops: number;
  rxQueue: number;
  txQueue: number;
  inode: number;
}

const TABLES = ["/proc/self/net/udp", "/proc/self/net/udp6"] as const;
const FD_DIR = "/proc/self/fd";

/** /proc prints each 32-bit word of an address as the host-order value of its network bytes. */
const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The four bytes of one 8-hex-digit word of /proc/net/udp*, in network order. */
function wordBytes(hex: string, at: number, out: number[]): void {
  const word = Number.parseInt(hex.slice(at, at + 8), 16);
  const bytes = [word >>> 24, (word >>> 16) & 255, (word >>> 8) & 255, word & 255];
  if (littleEndian) bytes.reverse();
  out.push(...bytes);
}

/** An IPv6 address in the text form inet_ntop and libuv give (RFC 5952, embedded IPv4 for ::ffff:0:0/96). */
function ipv6Text(bytes: number[]): string {
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push((bytes[i] << 8) | bytes[i + 1]);
  // The longest run of zero words, 2 or more, first one on a tie.
  let best = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLength) [best, bestLength] = [i, j - i];
    i = j;
  }
  if (bestLength < 2) best = -1;
  const v4 = `${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  if (best === 0 && (bestLength === 6 || (bestLength === 5 && words[5] === 0xffff))) {
    return bestLength === 6 ? `::${v4}` : `::ffff:${v4}`;
  }
  let text = "";
  for (let i = 0; i < 8; i++) {
    if (i === best) {
      text += "::";
      i += bestLength - 1;
      continue;
    }
    if (text !== "" && !text.endsWith(":")) text += ":";
    text += words[i].toString(16);
  }
  return text;
}

/** "0100007F:1F90" (udp) or 32 hex digits and a port (udp6) to [address, port]. */
function hostPort(field: string): [string, number] {
  const colon = field.indexOf(":");
  const hex = field.slice(0, colon);
  const port = Number.parseInt(field.slice(colon + 1), 16);
  const bytes: number[] = [];
  for (let at = 0; at < hex.length; at += 8) wordBytes(hex, at, bytes);
  return [bytes.length === 4 ? bytes.join(".") : ipv6Text(bytes), port];
}

/** Where the fields of one table line start and end (reused: parsing allocates per row only). */
const starts = new Int32Array(13);
const ends = new Int32Array(13);

/** Splits `line` on runs of spaces into the first 13 fields; false for a short (or header) line. */
function fields(line: string): boolean {
  let at = 0;
  for (let f = 0; f < 13; f++) {
    while (at < line.length && line.charCodeAt(at) === 32) at++;
    if (at >= line.length) return false;
    starts[f] = at;
    while (at < line.length && line.charCodeAt(at) !== 32) at++;
    ends[f] = at;
  }
  return true;
}

const field = (line: string, f: number) => line.slice(starts[f], ends[f]);

/**
 * Indexes one /proc/net/udp or udp6 table: inode -> its line, undecoded (decoding costs more than
 * the read for a big table, and only this process's rows are needed).
 */
function indexTable(text: string, into: Map<number, string>): void {
  let at = text.indexOf("\n") + 1; // after the header
  while (at > 0 && at < text.length) {
    let end = text.indexOf("\n", at);
    if (end < 0) end = text.length;
    const line = text.slice(at, end);
    at = end + 1;
    if (!fields(line)) continue;
    const inode = Number(field(line, 9));
    if (inode > 0) into.set(inode, line);
  }
}

/** Decodes one table line. Columns: sl local rem st tx_queue:rx_queue tr:when retrnsmt uid timeout inode ref pointer drops. */
function decode(line: string): Row {
  fields(line);
  const [address, port] = hostPort(field(line, 1));
  const [remoteAddress, remotePort] = hostPort(field(line, 2));
  const queues = field(line, 4);
  const colon = queues.indexOf(":");
  return {
    address,
    port,
    // st 01 (TCP_ESTABLISHED) is a connected socket; 07 (TCP_CLOSE) an unconnected one.
    remote: field(line, 3) === "01" ? formatHostPort(remoteAddress, remotePort) : undefined,
    txQueue: Number.parseInt(queues.slice(0, colon), 16),
    rxQueue: Number.parseInt(queues.slice(colon + 1), 16),
    inode: Number(field(line, 9)),
    drops: Number(field(line, 12)),
  };
}

/** Parses a whole /proc/net/udp or udp6 table into rows by inode. Exported for tests. */
export function parseUdpTable(text: string): Map<number, Row> {
  const lines = new Map<number, string>();
  indexTable(text, lines);
  const rows = new Map<number, Row>();
  for (const [inode, line] of lines) rows.set(inode, decode(line));
  return rows;
}

/** Whether this system shows the kernel's per-socket UDP counters (Linux with /proc mounted). */
export function kernelDropCountersAvailable(): boolean {
  try {
    return existsSync(TABLES[0]) && existsSync(FD_DIR);
  } catch {
    return false;
  }
}

/** fd name -> inode of the socket it was seen to be (0: not a socket), so a scan readlinks only news. */
const fdInodes = new Map<string, number>();

/** The inode a /proc/self/fd link names, 0 when it is not a socket (or vanished). */
function inodeOf(link: string | undefined): number {
  return link?.startsWith("socket:[") ? Number(link.slice(8, -1)) : 0;
}

/**
 * This process's inodes among `table`, from the fd names listed now. A cached fd whose socket is
 * still in the tables is trusted; any other is read again (`readlink` supplies the link, or
 * undefined). The one thing this misses: an fd that was UDP socket A, then was closed and reused for
 * UDP socket B, while A stays open elsewhere (a duplicate descriptor); mcudpt holds no such duplicates.
 */
function ownInodes(names: string[], table: Map<number, string>, links: Map<string, string | undefined>): Set<number> {
  const own = new Set<number>();
  for (const name of names) {
    const cached = fdInodes.get(name);
    let inode = cached;
    if (inode === undefined || !table.has(inode)) {
      inode = links.has(name) ? inodeOf(links.get(name)) : (cached ?? 0);
      fdInodes.set(name, inode);
    }
    if (table.has(inode)) own.add(inode);
  }
  if (fdInodes.size > names.length) {
    const live = new Set(names);
    for (const name of fdInodes.keys()) if (!live.has(name)) fdInodes.delete(name);
  }
  return own;
}

/** The fd names whose link must be read now (ownInodes reads nothing itself). */
function namesToRead(names: string[], table: Map<number, string>): string[] {
  return names.filter((name) => {
    const cached = fdInodes.get(name);
    return cached === undefined || !table.has(cached);
  });
}

function collect(table: Map<number, string>, own: Set<number>): Map<string, UdpSocketStats> {
  const stats = new Map<string, UdpSocketStats>();
  for (const inode of own) {
    const row = decode(table.get(inode) as string);
    const local = formatHostPort(row.address, row.port);
    const seen = stats.get(local);
    if (seen) {
      seen.drops += row.drops;
      seen.rxQueue += row.rxQueue;
      seen.txQueue += row.txQueue;
      seen.sockets++;
      continue;
    }
    stats.set(local, { local, ...row, sockets: 1 });
  }
  return stats;
}

/**
 * The kernel's counters for each UDP socket of this process, keyed by local address (see header).
 * Synchronous: with many sockets in the namespace prefer readUdpSocketStatsAsync (see Cost).
 */
export function readUdpSocketStats(): Map<string, UdpSocketStats> {
  try {
    const table = new Map<number, string>();
    let found = false;
    for (const path of TABLES) {
      try {
        indexTable(readFileSync(path, "latin1"), table);
        found = true;
      } catch {} // no IPv6 (udp6 absent) is fine; neither table: not Linux
    }
    if (!found) return new Map();
    const names = readdirSync(FD_DIR);
    const links = new Map<string, string | undefined>();
    for (const name of namesToRead(names, table)) {
      try {
        links.set(name, readlinkSync(`${FD_DIR}/${name}`));
      } catch {
        links.set(name, undefined); // closed meanwhile (e.g. readdir's own descriptor)
      }
    }
    return collect(table, ownInodes(names, table, links));
  } catch {
    return new Map();
  }
}

/** readUdpSocketStats with every read off the event loop. Never rejects. */
export async function readUdpSocketStatsAsync(): Promise<Map<string, UdpSocketStats>> {
  try {
    const texts = await Promise.all(TABLES.map((path) => fsp.readFile(path, "latin1").catch(() => undefined)));
    if (texts.every((text) => text === undefined)) return new Map();
    const table = new Map<number, string>();
    for (const text of texts) if (text !== undefined) indexTable(text, table);
    const names = await fsp.readdir(FD_DIR);
    const toRead = namesToRead(names, table);
    const read = await Promise.all(toRead.map((name) => fsp.readlink(`${FD_DIR}/${name}`).catch(() => undefined)));
    const links = new Map<string, string | undefined>(toRead.map((name, i) => [name, read[i]]));
    return collect(table, ownInodes(names, table, links));
  } catch {
    return new Map();
  }
}
