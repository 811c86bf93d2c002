/**
 * `--udp-buffer BYTES`: the kernel buffer (SO_RCVBUF/SO_SNDBUF) requested for the UDP sockets the
 * role opens, so a burst waits in the kernel instead of being dropped there while the process is busy:
 * the receiver's public sockets (default 2 MiB) and the sender's flow sockets (default 256 KiB each,
 * capped so that --max-flows × mappings × size stays within 1 GiB). The kernel caps it at net.core.rmem_max.
 */
import { FLOW_BUFFERS_TOTAL, FLOW_SOCKET_BUFFER } from "@mcudpt/core";
import type { ArgsDef } from "citty";
import { byteSize, type RawArgs, stringArg } from "../options.js";

const GIB = FLOW_BUFFERS_TOTAL / 1024 ** 3;

export const receiverBufferArgs = {
  "udp-buffer": {
    type: "string",
    description:
      "Kernel buffer of each public UDP socket, for bursts while mcudpt is busy, e.g. 4m (default 2m; the kernel caps it at net.core.rmem_max)",
    valueHint: "BYTES",
  },
} satisfies ArgsDef;

export const senderBufferArgs = {
  "udp-buffer": {
    type: "string",
    description: `Kernel buffer of each flow's UDP socket, for bursts from the target (default ${FLOW_SOCKET_BUFFER / 1024}k; total up to --max-flows × mappings × this, capped at ${GIB}g in all; the kernel caps it at net.core.rmem_max)`,
    valueHint: "BYTES",
  },
} satisfies ArgsDef;

/** The --udp-buffer value in bytes (64k to 1g), or undefined for the role's default. */
export function udpBufferOption(args: RawArgs): number | undefined {
  return stringArg(args, "udp-buffer") === undefined ? undefined : byteSize(args, "udp-buffer", 0);
}
