export {
  formatHostPort,
  formatHostPorts,
  type HostPort,
  type HostPortRange,
  parseHostPort,
  parseHostPortRange,
} from "./address.js";
export { Approvals, type ApprovalsOptions, REFUSAL_MEMORY_MS } from "./approvals.js";
export { Backoff, type BackoffOptions } from "./backoff.js";
export {
  type CarrierOptions,
  type DialCarrier,
  dialCarrier,
  type ListenCarrier,
  listenCarrier,
  type WebSocketCarrier,
} from "./carrier.js";
export { type Clock, systemClock } from "./clock.js";
export { TcpBufferReport, tcpBufferGranted, tcpBufferUnsupported } from "./tcp-buffer.js";
export { configDir, configPath } from "./config-dir.js";
export { nodeCrypto } from "./crypto.js";
export { type Dialer, PeerKeyChecker } from "./dialer.js";
export { MachineDriver, now } from "./driver.js";
export { bindFailure, fileFailure, messageOf, UserError } from "./errors.js";
export {
  kernelDropCountersAvailable,
  readUdpSocketStats,
  readUdpSocketStatsAsync,
  type UdpSocketStats,
} from "./kernel-drops.js";
export {
  bufferShortfall,
  KERNEL_SAMPLE_MAX_MS,
  KERNEL_SAMPLE_MS,
  KERNEL_SAMPLE_SOCKETS,
  type KernelDrops,
  KernelSampler,
  type KernelSamplerOptions,
  kernelDropsWarning,
  type SocketStatsReader,
} from "./kernel-sampler.js";
export {
  type DropSite,
  FlowSockets,
  type FlowSocketEvents,
  type FlowSocketsOptions,
  LINGER_MS,
  MAX_PENDING_BYTES,
  MAX_PENDING_PER_FLOW,
  type Target,
} from "./flow-sockets.js";
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
export { LOG_LINE_MAX, logLine, printableLine } from "./log-line.js";
export { type Logger, RateLimitedLog, silentLogger, stderrLogger } from "./logger.js";
export type { AskOperator, DialTrust, ListenTrust, OperatorQuestion } from "./peer-link.js";
export type { SideOptions } from "./role.js";
export { diffMappings, type MappingDiff, type MappingKey, refuseMappingSetChange, type RoleReload } from "./reload.js";
export {
  type ReceiverHandle,
  type ReceiverMapping,
  type ReceiverReload,
  type ReceiverOptions,
  CLIENT_SOCKET_BUFFER,
  startReceiver,
  waitFor,
} from "./receiver.js";
export {
  bypassesProxy,
  PROXY_REPLY_LIMIT,
  type ProxySpec,
  parseProxyUrl,
  proxyFromEnvironment,
  proxyHandshake,
} from "./proxy.js";
export { type ResolvedAddress, Resolver } from "./resolve.js";
export {
  FLOW_BUFFERS_TOTAL,
  FLOW_SOCKET_BUFFER,
  flowSocketBuffer,
  MIN_FLOW_SOCKET_BUFFER,
  type SenderHandle,
  type SenderMapping,
  type SenderOptions,
  type SenderReload,
  startSender,
} from "./sender.js";
export {
  type CertificateFiles,
  certificateFingerprint,
  loadOrCreateCertificate,
  parseFingerprint,
  pemFingerprint,
} from "./tls.js";
export type { DialerTlsOptions, ListenerTlsOptions } from "./tls-peer.js";
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
  filePeerPins,
  fileAdmission,
  fixedPeerPin,
  type PeerPins,
  type PinVerdict,
  type PeerAdmission,
  type AdmissionFiles,
  type AdmissionVerdict,
} from "./trust.js";
export { UdpBatcher } from "./udp-batch.js";
export { isPendingSocketError, MAX_UDP_SEND_ATTEMPTS, udpPayloadLimit } from "./udp-errors.js";
export {
  acceptWebSocket,
  connectWebSocket,
  WEBSOCKET_HEAD_LIMIT,
  WEBSOCKET_MAX_MESSAGE,
  WEBSOCKET_SEND_CHUNK,
  type WebSocketClientOptions,
} from "./websocket.js";
export { type CertificateSpec, createCertificate } from "./x509.js";
export { forwardedClient } from "./forwarded.js";
export { sourceMatcher } from "./source-match.js";
