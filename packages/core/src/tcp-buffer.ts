/**
 * --tcp-buffer: the SO_RCVBUF/SO_SNDBUF asked for the tunnel's TCP connections (dialed and accepted
 * alike), and what the kernel granted, said once per side: the first connection's sizes as
 * getsockopt reads them back, a warning when the kernel capped them (net.core.rmem_max/wmem_max),
 * or, on a transport that cannot set them (Node), one warning at the start. Setting a size turns
 * the kernel's autotuning off for that socket: the size asked is the size kept.
 */
import { REPORTED_FACTOR, sizeText } from "./kernel-sampler.js";
import type { Logger } from "./logger.js";
import type { TcpConnection, Transport } from "./transport.js";

/** The warning for a transport that cannot size TCP buffers. */
export function tcpBufferUnsupported(transport: Transport, bytes: number): string {
  return (
    `--tcp-buffer ${sizeText(bytes)} is not applied: the ${transport.name} transport cannot set SO_SNDBUF/SO_RCVBUF on TCP ` +
    "connections (Node's net.Socket has no such option), so the kernel's autotuned sizes apply; run under Bun to set them"
  );
}

/** The line saying what the kernel granted for `bytes` (getsockopt's sizes; undefined: unreadable). */
export function tcpBufferGranted(
  bytes: number,
  granted: { receive: number; send: number } | undefined,
): { level: "info" | "warn"; message: string; summary: string } {
  const asked = `--tcp-buffer ${sizeText(bytes)}`;
  if (granted === undefined) {
    const message = `${asked}: the kernel's sizes could not be read back`;
    return { level: "warn", message, summary: message };
  }
  // Linux reports twice what it holds for data (the other half is its bookkeeping).
  const receive = Math.floor(granted.receive / REPORTED_FACTOR);
  const send = Math.floor(granted.send / REPORTED_FACTOR);
  const raw =
    REPORTED_FACTOR === 1 ? "" : ` (getsockopt reads ${granted.receive} and ${granted.send}: Linux doubles them)`;
  const summary = `TCP buffers ${sizeText(bytes)} asked, granted receive ${sizeText(receive)}, send ${sizeText(send)}`;
  const text = `TCP buffers: asked ${sizeText(bytes)} (--tcp-buffer), the kernel granted receive ${sizeText(receive)}, send ${sizeText(send)}${raw}`;
  if (receive >= bytes && send >= bytes) return { level: "info", message: text, summary };
  const fix =
    process.platform === "linux"
      ? `sysctl -w net.core.rmem_max=${bytes} net.core.wmem_max=${bytes} (and in /etc/sysctl.d to keep it)`
      : "raise the system's socket buffer limit (on BSD and macOS: kern.ipc.maxsockbuf)";
  return { level: "warn", message: `${text}; the kernel capped them: ${fix}`, summary };
}

/** One side's --tcp-buffer: handed to the transport, and reported once. */
export class TcpBufferReport {
  private reported = false;

  constructor(
    /** The size asked for; undefined: the kernel's own (nothing set, nothing said). */
    readonly bytes: number | undefined,
    private readonly transport: Transport,
    private readonly logger: Logger | undefined,
  ) {
    if (bytes && !transport.setsTcpBuffers) logger?.log("warn", tcpBufferUnsupported(transport, bytes));
  }

  /** A connection was made or accepted (the TCP one, under any WebSocket): the first one's sizes are logged. */
  connected(connection: TcpConnection): void {
    if (!this.bytes || this.reported || !this.transport.setsTcpBuffers) return;
    this.reported = true;
    const { level, message } = tcpBufferGranted(this.bytes, connection.bufferBytes);
    this.logger?.log(level, message);
  }
}
