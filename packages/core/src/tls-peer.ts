/**
 * TLS policy of the two roles: the receiver serves its certificate; the sender decides whether the
 * certificate it was shown is the receiver's (CA-verified by the transport, or pinned by fingerprint
 * here), and a refusal is permanent: retrying would only offer the tunnel to an impostor again.
 */
import { isIP } from "node:net";
import { formatHostPort } from "./address.js";
import type { RateLimitedLog } from "./logger.js";
import { certificateFingerprint } from "./tls.js";
import { TLS_ONE_SIDE_HINT } from "./tls-transport.js";
import { type ClientTlsOptions, type ServerTlsOptions, type TcpConnection, TLS_CERT_REFUSED } from "./transport.js";

export interface ReceiverTlsOptions {
  /** PEM certificate (chain) and private key. */
  cert: string;
  key: string;
}

export interface SenderTlsOptions {
  /** PEM CA certificate(s): the transport verifies the receiver's chain and name against them. */
  ca?: string;
  /** Without `ca`: the receiver's certificate must have this fingerprint ("SHA256:<base64>"). */
  fingerprint?: string;
  /**
   * Without `ca` or `fingerprint`: asked about a certificate seen for the first time (trust on first
   * use); false refuses it. Absent: accepted. Once accepted it stays pinned for this process.
   */
  onNewCertificate?: (fingerprint: string, receiver: string) => boolean | Promise<boolean>;
}

/** listenTcp's `tls` for the receiver: failed handshakes are logged, rate-limited (port scanners). */
export function receiverListenTls(
  tls: ReceiverTlsOptions,
  handshakeTimeoutMs: number | undefined,
  log: RateLimitedLog,
): ServerTlsOptions {
  return {
    cert: tls.cert,
    key: tls.key,
    handshakeTimeoutMs,
    onHandshakeError: (error, address, port) => {
      const peer = formatHostPort(address, port);
      const hint = error.message.includes(TLS_ONE_SIDE_HINT) ? "" : " (a sender without --tls?)";
      log.log("tls-handshake", "warn", `connection from ${peer}: ${error.message}${hint}`);
    },
  };
}

/** The sender's side, kept across reconnects. */
export class SenderTlsPolicy {
  private pinned: string | undefined;
  readonly connectOptions: ClientTlsOptions;

  constructor(
    private readonly options: SenderTlsOptions,
    receiverHost: string,
  ) {
    this.pinned = options.fingerprint;
    // The core dials a resolved IP: the certificate must match the name the operator gave.
    this.connectOptions = { ca: options.ca, serverName: isIP(receiverHost) === 0 ? receiverHost : undefined };
  }

  /** A connect failure that is a refusal for good (the CA did not vouch for the certificate), or undefined. */
  refusal(error: unknown, receiver: string): string | undefined {
    if ((error as { code?: unknown })?.code !== TLS_CERT_REFUSED) return undefined;
    return `receiver ${receiver}: ${(error as Error).message} — refusing (possible impostor, or --tls-ca is not the CA that signed its certificate)`;
  }

  /** Checks an established connection's certificate; returns the refusal, or undefined to go on. */
  async check(connection: TcpConnection, receiver: string): Promise<string | undefined> {
    if (this.options.ca !== undefined) return undefined; // verified by the transport
    const der = connection.peerCertificate;
    if (!der) return `receiver ${receiver} presented no TLS certificate — refusing`;
    const fingerprint = certificateFingerprint(der);
    if (this.pinned !== undefined) {
      if (fingerprint === this.pinned) return undefined;
      return (
        `receiver's TLS certificate ${fingerprint} does not match the pinned ${this.pinned} — refusing (possible impostor at ${receiver}); ` +
        "if its certificate was replaced on purpose, pin the new fingerprint"
      );
    }
    const accepted = this.options.onNewCertificate ? await this.options.onNewCertificate(fingerprint, receiver) : true;
    if (!accepted) return `receiver's TLS certificate ${fingerprint} at ${receiver} was not accepted — refusing`;
    this.pinned = fingerprint;
    return undefined;
  }
}
