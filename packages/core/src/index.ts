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
  parseFingerprint,
  parsePublicKeyLine,
  publicKeyLine,
  verifyEd25519,
  writeKeyPair,
} from "./keys.js";
export { type Logger, RateLimitedLog, silentLogger, stderrLogger } from "./logger.js";
export {
  type OperatorQuestion,
  type ReceiverHandle,
  type ReceiverOptions,
  startReceiver,
  waitFor,
} from "./receiver.js";
export { type ResolvedAddress, Resolver } from "./resolve.js";
export { type SenderHandle, type SenderOptions, startSender } from "./sender.js";
export * from "./transport.js";
export {
  fileReceiverPins,
  fileSenderTrust,
  fixedReceiverPin,
  type ReceiverPins,
  type ReceiverVerdict,
  type SenderTrust,
  type SenderTrustFiles,
  type SenderVerdict,
} from "./trust.js";
