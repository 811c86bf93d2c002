export * from "./transport.js";
export { formatHostPort, type HostPort, parseHostPort } from "./address.js";
export { nodeCrypto } from "./crypto.js";
export { MachineDriver, now } from "./driver.js";
export { messageOf, UserError } from "./errors.js";
export { type Logger, RateLimitedLog, silentLogger, stderrLogger } from "./logger.js";
export { startReceiver, type ReceiverHandle, type ReceiverOptions, waitFor } from "./receiver.js";
export { Resolver, type ResolvedAddress } from "./resolve.js";
export { startSender, type SenderHandle, type SenderOptions } from "./sender.js";
