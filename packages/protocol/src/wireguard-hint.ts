/**
 * Recognises a WireGuard datagram, only to give one piece of advice: a WireGuard peer behind the
 * tunnel cannot reach a peer in front of it once their flow idled out, until the one in front sends
 * again, unless the one in front keeps the flow alive (PersistentKeepalive below --idle-timeout).
 *
 * WireGuard's messages start with a type byte and three zero bytes, and have fixed sizes: handshake
 * initiation (1) 148 bytes, response (2) 92, cookie reply (3) 64, transport data (4) 32 or more in
 * 16-byte steps. A guess, never acted on beyond a log line.
 */
const SIZES = [0, 148, 92, 64] as const;

export function looksLikeWireGuard(payload: Uint8Array): boolean {
  if (payload.length < 32 || payload[1] !== 0 || payload[2] !== 0 || payload[3] !== 0) return false;
  const type = payload[0];
  if (type === 4) return payload.length % 16 === 0;
  return type >= 1 && type <= 3 && payload.length === SIZES[type];
}
