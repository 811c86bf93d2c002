export { formatHostPort, type HostPort, parseHostPort } from "./address.js";
export { configDir, configPath } from "./config-dir.js";
export { nodeCrypto } from "./crypto.js";
export { MachineDriver, now } from "./driver.js";
export { messageOf, UserError } from "./errors.js";
export {
  fingerprint,
  generateKeyPair,
  identityFromPem,
  isKeyFileExposed,
  type KeyPairFiles,
  type LoadedIdentity,
  loadIdentity,
  loadOrCreateIdentity,
  parsePublicKeyLine,
  publicKeyLine,
  verifyEd25519,
  writeKeyPair,
} from "./keys.js";
export { type Logger, RateLimitedLog, silentLogger, stderrLogger } from "./logger.js";
export type { DialTrust, ListenTrust, OperatorQuestion } from "./peer-link.js";
export {
  type ReceiverHandle,
  type ReceiverMapping,
  type ReceiverOptions,
  startReceiver,
  waitFor,
} from "./receiver.js";
export { type ResolvedAddress, Resolver } from "./resolve.js";
export { type SenderHandle, type SenderMapping, type SenderOptions, startSender } from "./sender.js";
export {
  type CertificateFiles,
  certificateFingerprint,
  loadOrCreateCertificate,
  parseFingerprint,
  pemFingerprint,
} from "./tls.js";
export type { ReceiverTlsOptions, SenderTlsOptions } from "./tls-peer.js";
export {
  DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
  isPlaintextPeerError,
  TLS_ONE_SIDE_HINT,
  tlsCertificateRefused,
  tlsHandshakeFailed,
} from "./tls-transport.js";
export * from "./transport.js";
export {
  fileCertificatePins,
  fileReceiverPins,
  fileSenderTrust,
  fixedReceiverPin,
  type ReceiverPins,
  type ReceiverVerdict,
  type SenderTrust,
  type SenderTrustFiles,
  type SenderVerdict,
} from "./trust.js";
export { UdpBatcher } from "./udp-batch.js";
export { type CertificateSpec, createCertificate } from "./x509.js";
