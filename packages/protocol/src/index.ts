export { formatIPv4, formatIPv6, ipFamily, parseIPv4, parseIPv6 } from "./address.js";
export { bytesEqual, concatBytes, fromHex, toHex, utf8 } from "./bytes.js";
export { type DecoderOptions, describeStranger, FrameDecoder } from "./decoder.js";
export {
  type ClientFlow,
  type CommonConfig,
  DEFAULTS,
  type DropReason,
  type LogLevel,
  type MappingStats,
  type Output,
  type Stats,
} from "./endpoint.js";
export type { FlowCounters } from "./flow-table.js";
export * from "./frames.js";
export type { Credentials, CryptoProvider, Identity, Side } from "./link.js";
export { checkMappings, type MappingConfig, pairMappings } from "./mappings.js";
export {
  MAX_UDP_PAYLOAD,
  PROXY_V2_IPV4_LENGTH,
  PROXY_V2_IPV6_LENGTH,
  PROXY_V2_SIGNATURE,
  type ProxyEndpoint,
  proxyV2Header,
  withProxyHeader,
} from "./proxy-v2.js";
export { type RateLimitConfig, SourceRateLimiter } from "./rate-limit.js";
export { RECEIVER_DEFAULTS, type ReceiverConfig, ReceiverMachine } from "./receiver.js";
export { type SenderConfig, SenderMachine, type TargetFlow } from "./sender.js";
export { SessionEndpoint } from "./session.js";
export { PEER_TEXT_MAX, peerText, printable } from "./text.js";
export { encodeFrame, FrameWriter } from "./writer.js";
