/**
 * Consecutive UDP ports for port-range tests. A range cannot come from the kernel's ephemeral ports
 * (they are not consecutive), so a base is drawn at random below the ephemeral range
 * (ip_local_port_range starts at 32768) on a loopback address of its own, and drawn again when a
 * port of it is taken: bounded attempts, nothing assumed free.
 */
import type { Transport, UdpSocket } from "@mcudpt/core";

/** 127.0.0.1 and its neighbours are everyone's; a range goes on a loopback address few tests use. */
export function rangeHost(): string {
  return `127.${1 + Math.floor(Math.random() * 250)}.${Math.floor(Math.random() * 250)}.${2 + Math.floor(Math.random() * 250)}`;
}

/** `count` UDP sockets on `host`, on ports base … base + count − 1; `handler(i)` handles datagrams of the i-th. */
export async function bindPortRange(
  transport: Transport,
  host: string,
  count: number,
  handler: (index: number, socket: () => UdpSocket) => (data: Uint8Array, address: string, port: number) => void,
): Promise<{ base: number; sockets: UdpSocket[] }> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * (32_000 - 20_000 - count));
    const sockets: UdpSocket[] = [];
    try {
      for (let i = 0; i < count; i++) {
        let socket: UdpSocket | undefined;
        const self = () => socket as UdpSocket;
        socket = await transport.bindUdp({ host, port: base + i, onDatagram: handler(i, self), onError: () => {} });
        sockets.push(socket);
      }
      return { base, sockets };
    } catch {
      for (const socket of sockets) socket.close();
    }
  }
  throw new Error(`no ${count} consecutive free UDP ports on ${host} in 20 attempts`);
}

/** A base where `count` consecutive UDP ports of `host` are free now (bound, then released). */
export async function freePortRange(transport: Transport, host: string, count: number): Promise<number> {
  const { base, sockets } = await bindPortRange(transport, host, count, () => () => {});
  for (const socket of sockets) socket.close();
  return base;
}
