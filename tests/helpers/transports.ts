/** The transports this runtime can run: both under Bun, only the Node one under Node. */
import type { Transport } from "@mcudpt/core";
import { bunTransport } from "@mcudpt/transport-bun";
import { nodeTransport } from "@mcudpt/transport-node";

export function availableTransports(): Transport[] {
  // The Bun adapter only touches the Bun global when called, so importing it under Node is safe.
  return typeof Bun !== "undefined" ? [bunTransport, nodeTransport] : [nodeTransport];
}
