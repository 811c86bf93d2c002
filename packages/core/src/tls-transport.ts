/**
 * Error shapes the transports share for TLS, so both adapters fail the same way (see ConnectOptions.tls).
 */
import { TLS_CERT_REFUSED } from "./transport.js";

/** A listener drops a client whose TLS handshake has not completed by then, unless told otherwise. */
export const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

/** The handshake did not complete: a plaintext peer, a closed connection, a protocol error. */
export function tlsHandshakeFailed(reason: unknown): Error {
  const text = reason instanceof Error ? reason.message : String(reason ?? "connection closed");
  return new Error(`TLS handshake failed: ${text}`);
}

/** The handshake completed but the certificate did not verify against the configured CA. */
export function tlsCertificateRefused(reason: unknown): Error {
  const text = reason instanceof Error ? reason.message : String(reason ?? "not trusted");
  return Object.assign(new Error(`TLS certificate refused: ${text}`), { code: TLS_CERT_REFUSED });
}
