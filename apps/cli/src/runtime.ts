/** Picks the transport: Bun's own sockets when running on Bun, node:dgram/node:net otherwise. */
import { type Transport, UserError } from "@mcudpt/core";
import { bunTransport } from "@mcudpt/transport-bun";
import { nodeTransport } from "@mcudpt/transport-node";

export type TransportChoice = "auto" | "bun" | "node";

export const runningOnBun = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined";

export function pickTransport(choice: TransportChoice): Transport {
  if (choice === "bun" && !runningOnBun) {
    throw new UserError(
      "--transport bun needs the Bun runtime: run mcudpt with bun (bun mcudpt.js …) or use --transport node",
    );
  }
  return choice === "bun" || (choice === "auto" && runningOnBun) ? bunTransport : nodeTransport;
}

export function runtimeDescription(): string {
  const versions = process.versions as Record<string, string | undefined>;
  return runningOnBun ? `Bun ${versions.bun}` : `Node.js ${process.version}`;
}
