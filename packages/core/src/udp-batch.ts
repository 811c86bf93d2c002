/**
 * Collects the datagrams one drain of a machine produces for one UDP socket and sends them together:
 * through the transport's sendMany when it has one (Bun: one sendmmsg instead of one per datagram),
 * else one send() each. The batch array is reused, so batching allocates nothing per datagram.
 */
import type { UdpBatch, UdpSocket } from "./transport.js";

export class UdpBatcher {
  private readonly batch: UdpBatch = [];

  /** @param connected the socket is connected: entries are data only, not data, port, address. */
  constructor(private readonly connected: boolean) {}

  get size(): number {
    return this.connected ? this.batch.length : this.batch.length / 3;
  }

  add(data: Uint8Array, port?: number, address?: string): void {
    if (this.connected) this.batch.push(data);
    else this.batch.push(data, port as number, address as string);
  }

  /**
   * Sends everything added since the last flush (nothing is kept, whatever happens) and returns how
   * many datagrams were dropped, each on its own account (see UdpSocket.send/sendMany: a socket's
   * pending ICMP error is retried by the transport, never counted here as a drop).
   */
  flush(socket: UdpSocket | undefined): number {
    const batch = this.batch;
    const count = this.size;
    if (count === 0) return 0;
    let sent = 0;
    try {
      if (!socket) sent = 0;
      else if (socket.sendMany) sent = socket.sendMany(batch);
      else if (this.connected) for (const data of batch) sent += socket.send(data as Uint8Array) ? 1 : 0;
      else
        for (let i = 0; i < batch.length; i += 3) {
          sent += socket.send(batch[i] as Uint8Array, batch[i + 1] as number, batch[i + 2] as string) ? 1 : 0;
        }
    } finally {
      // Also on a throw (a bug): stale views into old TCP chunks must not be sent by a later flush.
      batch.length = 0;
    }
    return count - sent;
  }
}
