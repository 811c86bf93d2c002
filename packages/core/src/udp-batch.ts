/**
 * Collects the datagrams one drain of a machine produces for one UDP socket and sends them together:
 * through the transport's sendMany when it has one (Bun: one sendmmsg instead of one per datagram),
 * else one send() each. The arrays are reused, so batching allocates nothing per datagram. Each
 * datagram may carry a reference (its flow) so that a failed one is reported as that flow's.
 */
import type { UdpBatch, UdpSocket } from "./transport.js";

export class UdpBatcher<R = unknown> {
  private readonly batch: UdpBatch = [];
  private readonly refs: Array<R | undefined> = [];
  private readonly failed: number[] = [];

  /** @param connected the socket is connected: entries are data only, not data, port, address. */
  constructor(private readonly connected: boolean) {}

  get size(): number {
    return this.refs.length;
  }

  add(data: Uint8Array, port?: number, address?: string, ref?: R): void {
    if (this.connected) this.batch.push(data);
    else this.batch.push(data, port as number, address as string);
    this.refs.push(ref);
  }

  /**
   * Sends everything added since the last flush (nothing is kept, whatever happens), tells `onFailed`
   * of each datagram that was not sent (its reference and size), and returns how many were not: each
   * on its own account (a socket's pending ICMP error is retried by the transport, never counted here).
   */
  flush(socket: UdpSocket | undefined, onFailed?: (ref: R, size: number) => void): number {
    const { batch, refs, failed } = this;
    const count = refs.length;
    if (count === 0) return 0;
    const stride = this.connected ? 1 : 3;
    let sent = 0;
    failed.length = 0;
    try {
      if (!socket) sent = 0;
      else if (socket.sendMany) sent = socket.sendMany(batch, failed);
      else {
        for (let i = 0; i < count; i++) {
          const at = i * stride;
          const ok = this.connected
            ? socket.send(batch[at] as Uint8Array)
            : socket.send(batch[at] as Uint8Array, batch[at + 1] as number, batch[at + 2] as string);
          if (ok) sent++;
          else failed.push(i);
        }
      }
      if (onFailed && sent < count) {
        // A transport that does not say which ones failed: the last ones are taken for them.
        if (failed.length !== count - sent) {
          failed.length = 0;
          for (let i = sent; i < count; i++) failed.push(i);
        }
        for (const i of failed) onFailed(refs[i] as R, (batch[i * stride] as Uint8Array).length);
      }
    } finally {
      // Also on a throw (a bug): stale views into old TCP chunks must not be sent by a later flush.
      batch.length = 0;
      refs.length = 0;
    }
    return count - sent;
  }
}
