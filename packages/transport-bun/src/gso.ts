/**
 * UDP generic segmentation offload (Linux ≥ 4.18, `UDP_SEGMENT`) for Bun's sockets, through libc's
 * sendmsg over bun:ffi: a run of equal-sized datagrams to one destination goes to the kernel as one
 * call, which walks the IP and UDP output path once and cuts the run into datagrams at the end. The
 * receiving side sees ordinary datagrams, each with the size it was given.
 *
 * Why: sendmmsg still costs the kernel a full trip through the output path per datagram. WireGuard's
 * bulk traffic through a sender is runs of same-sized datagrams to one target, and the trip was
 * most of the sender's kernel time (docs/performance.md: about 2 µs per datagram saved).
 *
 * The datagrams are not copied: each is one iovec pointing at the caller's bytes. A run is at most
 * 64 datagrams (UDP_MAX_SEGMENTS on older kernels) and at most what one UDP datagram may carry.
 * Any failure sends nothing (UDP sendmsg is all or nothing) and the caller sends the run the
 * ordinary way, which reports or retries each datagram as before; a pending ICMP error the call
 * consumed is still reported by Bun from the error queue (IP_RECVERR). EINVAL and EIO are the
 * kernel refusing segmentation itself (a size the route's MTU cannot carry unfragmented, a kernel
 * without UDP_SEGMENT, IPsec): that socket stops trying runs of that size or larger.
 */

import { openLibc } from "./libc.js";

/** Fewer datagrams than this go through sendmmsg: the gain is per datagram, the setup per run. */
export const MIN_RUN = 3;
const MAX_SEGMENTS = 64;
/** What one UDP datagram over IPv4 carries (IPv6 takes 20 bytes more): a run's bytes fit either. */
const MAX_RUN_BYTES = 65_507;
const SOL_UDP = 17;
const UDP_SEGMENT = 103;
const AF_INET = 2;
const AF_INET6 = 10;
const EINVAL = 22;
const EIO = 5;

/** struct msghdr (56 bytes), the iovecs, a cmsghdr with its u16 (CMSG_SPACE(2) = 24), a sockaddr. */
const MSGHDR = 0;
const IOVECS = 56;
const CMSG = IOVECS + 16 * MAX_SEGMENTS;
const SOCKADDR = CMSG + 24;
const NAME_TEXT = SOCKADDR + 32;
const SCRATCH_SIZE = NAME_TEXT + 64;

/** One run of datagrams: batch entries from `from`, every `stride`, `count` of them. */
export interface GsoRun {
  batch: ReadonlyArray<Uint8Array | number | string>;
  from: number;
  count: number;
  stride: number;
}

export interface GsoSocket {
  /**
   * How many datagrams starting at batch entry `from` can go as one run: consecutive, to the same
   * destination, all as long as the first but the last (which may be shorter), within the run
   * limits; 1 when the first cannot start a run.
   */
  runAt(batch: ReadonlyArray<Uint8Array | number | string>, from: number, stride: number): number;
  /** Sends the run in one call; false when nothing was sent (the caller sends it the ordinary way). */
  send(run: GsoRun): boolean;
  /** Datagrams sent in runs so far. */
  readonly sent: number;
}

interface Libc {
  sendmsg(fd: number, msg: number, flags: number): number | bigint;
  /** getsockopt(fd, SOL_UDP, UDP_SEGMENT) succeeds: the kernel knows the option (Linux ≥ 4.18). */
  knowsUdpSegment(fd: number): boolean;
  errno(): number;
  inetPton(family: number, text: number, into: number): number;
}

let libc: Promise<Libc | undefined> | undefined;

function loadLibc(): Promise<Libc | undefined> {
  libc ??= (async () => {
    if (process.platform !== "linux" || process.env.MCUDPT_NO_GSO === "1") return undefined;
    try {
      const { FFIType, read } = await import("bun:ffi");
      const lib = await openLibc({
        sendmsg: { args: [FFIType.i32, FFIType.ptr, FFIType.i32], returns: FFIType.i64_fast },
        __errno_location: { args: [], returns: FFIType.ptr },
        inet_pton: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
        getsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
      } as const);
      if (lib) {
        const s = lib.symbols;
        const value = new Int32Array(1);
        const length = new Uint32Array(1);
        return {
          sendmsg: (fd, msg, flags) => s.sendmsg(fd, msg as never, flags),
          knowsUdpSegment: (fd) => {
            length[0] = 4;
            return s.getsockopt(fd, SOL_UDP, UDP_SEGMENT, value, length) === 0;
          },
          errno: () => read.i32(s.__errno_location() as never, 0),
          inetPton: (family, text, into) => s.inet_pton(family, text as never, into as never),
        };
      }
    } catch {}
    return undefined; // no bun:ffi in this build, or no libc found: sendmmsg only
  })();
  return libc;
}

/** Makes GsoSockets: one shared scratch area (sends are synchronous, JS is single-threaded). */
export interface Gso {
  /**
   * GSO for the socket with descriptor `fd`, or undefined when the kernel has none. `family` is the
   * socket's (an unconnected one writes each run's destination in it).
   */
  forSocket(fd: number, connected: boolean, family: string): GsoSocket | undefined;
}

let gso: Promise<Gso | undefined> | undefined;

/** Loads once; undefined where GSO cannot be had (not Linux, no bun:ffi, MCUDPT_NO_GSO=1). */
export function loadGso(): Promise<Gso | undefined> {
  gso ??= (async () => {
    const c = await loadLibc();
    if (!c) return undefined;
    const { ptr } = await import("bun:ffi");
    // An ArrayBuffer from the start: its storage never moves, so its address is taken once.
    const scratch = new Uint8Array(new ArrayBuffer(SCRATCH_SIZE));
    const view = new DataView(scratch.buffer);
    const base = ptr(scratch);
    /** A 64-bit little-endian field from a number (pointers and sizes are below 2^53): no BigInt per call. */
    const address64 = (at: number, value: number) => {
      view.setUint32(at, value >>> 0, true);
      view.setUint32(at + 4, Math.floor(value / 0x1_0000_0000), true);
    };
    // The parts of the msghdr that never change: iovecs and control message at fixed places.
    address64(MSGHDR + 16, base + IOVECS);
    address64(MSGHDR + 32, base + CMSG);
    address64(MSGHDR + 40, 24);
    address64(CMSG, 18); // cmsg_len = CMSG_LEN(2)
    view.setInt32(CMSG + 8, SOL_UDP, true);
    view.setInt32(CMSG + 12, UDP_SEGMENT, true);
    /** The destination the sockaddr holds (any socket's), so a run to the same one skips inet_pton. */
    let named: { address: string; port: number; family: string; length: number } | undefined;

    const nameFor = (family: string, address: string, port: number): number => {
      if (named && named.address === address && named.port === port && named.family === family) return named.length;
      named = undefined;
      const six = family === "IPv6";
      const text = six && !address.includes(":") ? `::ffff:${address}` : address;
      if (text.length > 63) return 0;
      for (let i = 0; i < text.length; i++) scratch[NAME_TEXT + i] = text.charCodeAt(i) & 0x7f;
      scratch[NAME_TEXT + text.length] = 0;
      scratch.fill(0, SOCKADDR, NAME_TEXT);
      view.setUint16(SOCKADDR, six ? AF_INET6 : AF_INET, true);
      view.setUint16(SOCKADDR + 2, port, false);
      const into = base + SOCKADDR + (six ? 8 : 4);
      if (c.inetPton(six ? AF_INET6 : AF_INET, base + NAME_TEXT, into) !== 1) return 0; // a zone id, a name
      named = { address, port, family, length: six ? 28 : 16 };
      return named.length;
    };

    /**
     * Asked of the first socket. A kernel older than 4.18 ignores a control message of a level it
     * does not know, and would send a run as one datagram of all their bytes: never without this.
     */
    let kernelSegments: boolean | undefined;

    return {
      forSocket(fd, connected, family) {
        kernelSegments ??= c.knowsUdpSegment(fd);
        if (!kernelSegments) return undefined;
        /** Runs of datagrams this long or longer are not tried (the kernel refused one). */
        let refusedFrom = Number.POSITIVE_INFINITY;
        let sent = 0;
        return {
          get sent() {
            return sent;
          },
          runAt(batch, from, stride) {
            const size = (batch[from] as Uint8Array).byteLength;
            if (size === 0 || size >= refusedFrom) return 1;
            const port = batch[from + 1];
            const address = batch[from + 2];
            let total = size;
            let count = 1;
            for (let i = from + stride; i < batch.length && count < MAX_SEGMENTS; i += stride) {
              const next = (batch[i] as Uint8Array).byteLength;
              if (next > size || next === 0 || total + next > MAX_RUN_BYTES) break;
              if (!connected && (batch[i + 1] !== port || batch[i + 2] !== address)) break;
              total += next;
              count++;
              if (next < size) break; // a shorter one ends the run: the kernel cuts every `size` bytes
            }
            return count;
          },
          send({ batch, from, count, stride }) {
            const size = (batch[from] as Uint8Array).byteLength;
            let nameLength = 0;
            if (!connected) {
              nameLength = nameFor(family, batch[from + 2] as string, batch[from + 1] as number);
              if (nameLength === 0) return false;
            }
            address64(MSGHDR, nameLength === 0 ? 0 : base + SOCKADDR);
            view.setUint32(MSGHDR + 8, nameLength, true);
            address64(MSGHDR + 24, count);
            for (let k = 0, i = from; k < count; k++, i += stride) {
              const data = batch[i] as Uint8Array;
              address64(IOVECS + 16 * k, ptr(data));
              address64(IOVECS + 16 * k + 8, data.byteLength);
            }
            view.setUint16(CMSG + 16, size, true);
            if (c.sendmsg(fd, base + MSGHDR, 0) >= 0) {
              sent += count;
              return true;
            }
            const errno = c.errno();
            if (errno === EINVAL || errno === EIO) refusedFrom = Math.min(refusedFrom, size);
            return false;
          },
        };
      },
    };
  })();
  return gso;
}
