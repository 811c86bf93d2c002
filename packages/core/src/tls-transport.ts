/**
 * Error shapes the transports share for TLS, so both adapters fail the same way (see ConnectOptions.tls).
 */
import { TLS_CERT_REFUSED } from "./transport.js";

/** A listener drops a client whose TLS handshake has not completed by then, unless told otherwise. */
export const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * The hint both ends give when one speaks TLS and the other does not, whichever of them listens: the
 * plaintext end sees a TLS record where the preface should be (see describeStranger), the TLS end a
 * handshake that fails at once.
 */
export const TLS_ONE_SIDE_HINT = "is TLS enabled on one side only?";

/** The peer closed or reset the connection before the handshake completed. */
const CLOSED_BY_PEER = "the peer closed the connection";

/**
 * OpenSSL's reason from a TLS error, as one short line: Node gives `reason` ("wrong version number")
 * and a message with the error queue and source position spread over lines; BoringSSL (Bun) gives
 * "error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER".
 */
function tlsReason(reason: unknown): string {
  if (reason === undefined || reason === null) return CLOSED_BY_PEER;
  if (!(reason instanceof Error)) return String(reason);
  const code = (reason as NodeJS.ErrnoException).code;
  if (code === "ECONNRESET" || code === "EPIPE") return `${CLOSED_BY_PEER} (${code})`;
  const openssl = (reason as { reason?: unknown }).reason;
  if (typeof openssl === "string" && openssl !== "") return openssl.toLowerCase().replaceAll("_", " ");
  const boring = /error:[0-9a-f]+:[^:]*:[^:]*:([A-Z0-9_]+)/.exec(reason.message);
  if (boring) return boring[1].toLowerCase().replaceAll("_", " ");
  return reason.message.split("\n")[0].trim();
}

/** What a handshake against a plaintext peer ends with: its bytes are no TLS record, or it hangs up. */
function plaintextPeer(text: string): boolean {
  return (
    /wrong version number|unknown protocol|http request|packet length too long|record layer failure/i.test(text) ||
    text.startsWith(CLOSED_BY_PEER)
  );
}

/** Whether a listener's handshake error says the client spoke something other than TLS. */
export function isPlaintextPeerError(reason: unknown): boolean {
  return (
    reason !== undefined &&
    reason !== null &&
    plaintextPeer(tlsReason(reason)) &&
    !tlsReason(reason).startsWith(CLOSED_BY_PEER)
  );
}

/** The handshake did not complete: a plaintext peer, a closed connection, a protocol error. */
export function tlsHandshakeFailed(reason: unknown): Error {
  const text = tlsReason(reason);
  return new Error(`TLS handshake failed: ${text}${plaintextPeer(text) ? ` (${TLS_ONE_SIDE_HINT})` : ""}`);
}

/** The handshake completed but the certificate did not verify against the configured CA. */
export function tlsCertificateRefused(reason: unknown): Error {
  const text = reason instanceof Error ? reason.message : String(reason ?? "not trusted");
  return Object.assign(new Error(`TLS certificate refused: ${text}`), { code: TLS_CERT_REFUSED });
}
