/**
 * TLS policy of the two TCP sides, whichever role each has: the listening side serves its certificate;
 * the dialing side decides whether the certificate it was shown is its peer's (CA-verified by the
 * transport, or pinned by fingerprint here), and a refusal is permanent: retrying would only offer the
 * tunnel to an impostor again. `peerName` ("sender" or "receiver") is what the other side is.
 */
import { isIP } from "node:net";
import { formatHostPort } from "./address.js";
import type { RateLimitedLog } from "./logger.js";
import { certificateFingerprint } from "./tls.js";
import { TLS_ONE_SIDE_HINT } from "./tls-transport.js";
import { type ClientTlsOptions, type ServerTlsOptions, type TcpConnection, TLS_CERT_REFUSED } from "./transport.js";

export interface ListenerTlsOptions {
  /** PEM certificate (chain) and private key. */
  cert: string;
  key: string;
}

export interface DialerTlsOptions {
  /** PEM CA certificate(s): the transport verifies the peer's chain and name against them. */
  ca?: string;
  /** Without `ca`: the peer's certificate must have this fingerprint ("SHA256:<base64>"). */
  fingerprint?: string;
  /**
   * Without `ca` or `fingerprint`: asked about the certificate at every connection (trust on first use
   * in a file such as known_receivers, which is then the pin, re-read each time); false refuses it, and
   * a string refuses it with that reason. Absent: the first certificate is accepted and stays pinned
   * for this process.
   */
  onNewCertificate?: (fingerprint: string, peer: string) => boolean | string | Promise<boolean | string>;
}

/** listenTcp's `tls` for the listening side: failed handshakes are logged, rate-limited (port scanners). */
export function listenerTls(
  tls: ListenerTlsOptions,
  handshakeTimeoutMs: number | undefined,
  log: RateLimitedLog,
  peerName: string,
): ServerTlsOptions {
  return {
    cert: tls.cert,
    key: tls.key,
    handshakeTimeoutMs,
    onHandshakeError: (error, address, port) => {
      const peer = formatHostPort(address, port);
      const hint = error.message.includes(TLS_ONE_SIDE_HINT) ? "" : ` (a ${peerName} without --tls?)`;
      log.log("tls-handshake", "warn", `connection from ${peer}: ${error.message}${hint}`);
    },
  };
}

/** The dialing side's, kept across reconnects. */
export class DialerTlsPolicy {
  private pinned: string | undefined;
  readonly connectOptions: ClientTlsOptions;

  constructor(
    private readonly options: DialerTlsOptions,
    peerHost: string,
    private readonly peerName: string,
  ) {
    this.pinned = options.fingerprint;
    // The core dials a resolved IP: the certificate must match the name the operator gave.
    this.connectOptions = { ca: options.ca, serverName: isIP(peerHost) === 0 ? peerHost : undefined };
  }

  /** A connect failure that is a refusal for good (the CA did not vouch for the certificate), or undefined. */
  refusal(error: unknown, peer: string): string | undefined {
    if ((error as { code?: unknown })?.code !== TLS_CERT_REFUSED) return undefined;
    return `${this.peerName} ${peer}: ${(error as Error).message} — refusing (possible impostor, or --tls-ca is not the CA that signed its certificate)`;
  }

  /** Checks an established connection's certificate; returns the refusal, or undefined to go on. */
  async check(connection: TcpConnection, peer: string): Promise<string | undefined> {
    if (this.options.ca !== undefined) return undefined; // verified by the transport
    const name = this.peerName;
    const der = connection.peerCertificate;
    if (!der) return `${name} ${peer} presented no TLS certificate — refusing`;
    const fingerprint = certificateFingerprint(der);
    if (this.pinned !== undefined) {
      if (fingerprint === this.pinned) return undefined;
      return (
        `${name}'s TLS certificate ${fingerprint} does not match the pinned ${this.pinned} — refusing (possible impostor at ${peer}); ` +
        "if its certificate was replaced on purpose, pin the new fingerprint"
      );
    }
    const hook = this.options.onNewCertificate;
    if (hook === undefined) {
      this.pinned = fingerprint;
      return undefined;
    }
    // No pin kept here: the hook's file is the pin, so an edit to it (a certificate replaced on
    // purpose, its line deleted or changed) takes effect at the next connection without a restart.
    const verdict = await hook(fingerprint, peer);
    if (typeof verdict === "string") return verdict;
    if (!verdict) return `${name}'s TLS certificate ${fingerprint} at ${peer} was not accepted — refusing`;
    return undefined;
  }
}
