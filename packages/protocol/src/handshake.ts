/** The handshake checks both sides make on the peer's HELLO, and the wording of handshake errors. */
import type { Settings } from "./config.js";
import { AuthMode, Capability, FRAME_TYPE_NAMES, type Frame, FrameType, ProtocolError, Role } from "./frames.js";
import { type HelloFrame, Link } from "./link.js";
import { checkPairedPorts, MappingIds, pairMappings, pairPartially } from "./mappings.js";

/** Checks the peer's HELLO against ours and keeps it on `link`; throws ProtocolError with an operator-readable reason. */
export function checkPeerHello(link: Link, frame: Frame, settings: Settings, role: Role): HelloFrame {
  if (frame.type !== FrameType.Hello) throw unexpected(frame, "HELLO");
  if (frame.role === link.localHello.role) {
    const both = frame.role === Role.Receiver ? "receivers" : "senders";
    throw new ProtocolError(
      "role-conflict",
      `both sides are ${both}: one side must be a receiver and the other a sender`,
    );
  }
  if (frame.auth !== link.localHello.auth) {
    throw new ProtocolError(
      "auth-mismatch",
      `peer uses ${Link.authName(frame.auth)} but this side uses ${Link.authName(link.localHello.auth)}: give both sides the same --secret, or neither`,
    );
  }
  if (frame.auth === AuthMode.Key && frame.publicKey.length === 0) {
    throw new ProtocolError("bad-field", "HELLO in key mode carries no public key");
  }
  const ours = { names: settings.mappingNames, ports: settings.mappingPorts };
  const theirs = { names: frame.mappings, ports: frame.mappingPorts };
  const [receiver, sender] = role === Role.Receiver ? [ours, theirs] : [theirs, ours];
  // With Senders on both sides (§18) the sender may serve a subset of the receiver's mappings.
  const partial = (link.localHello.capabilities & frame.capabilities & Capability.Senders) !== 0;
  link.mappingPairs = partial ? pairPartially(receiver.names, sender.names) : pairMappings(receiver.names, sender.names);
  checkPairedPorts(link.mappingPairs, receiver, sender);
  link.receiverIds = new MappingIds(receiver.ports ?? receiver.names.map(() => 1));
  link.peerHello = {
    ...frame,
    nonce: frame.nonce.slice(),
    publicKey: frame.publicKey.slice(),
    mappings: [...frame.mappings],
    ...(frame.mappingPorts ? { mappingPorts: [...frame.mappingPorts] } : {}),
  };
  return link.peerHello;
}

/**
 * The acceptor's first handshake step: the peer's HELLO (then AUTH is awaited). Returns whether the
 * frame was consumed; anything but AUTH after it, or anything during approval, is a protocol error.
 */
export function acceptorHelloStep(link: Link, frame: Frame, settings: Settings, role: Role): boolean {
  if (link.state === "hello") {
    checkPeerHello(link, frame, settings, role);
    link.enter("peer-hello");
    return true;
  }
  if (link.state !== "auth") throw unexpected(frame, "nothing until the operator answers");
  return false;
}

export function unexpected(frame: Frame, expected: string): ProtocolError {
  const name =
    frame.type === "extension" ? `extension 0x${frame.extensionType.toString(16)}` : FRAME_TYPE_NAMES[frame.type];
  return new ProtocolError("unexpected-frame", `unexpected ${name} during the handshake (expected ${expected})`);
}

export function flows(count: number): string {
  return count === 1 ? "1 flow" : `${count} flows`;
}
