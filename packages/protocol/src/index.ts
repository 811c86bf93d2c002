export { formatIPv4, formatIPv6, ipFamily, parseIPv4, parseIPv6 } from "./address.js";
export { bytesEqual, concatBytes, fromHex, toHex, utf8 } from "./bytes.js";
export { type DecoderOptions, describeStranger, FrameDecoder } from "./decoder.js";
export { type CommonConfig, DEFAULTS, type Limits, type PeerKeyCheck } from "./config.js";
export type { FlowBase, Flows } from "./flows.js";
export * from "./frames.js";
export type { LaneInfo } from "./lanes.js";
export type { Credentials, CryptoProvider, Identity, LinkState, Side } from "./link.js";
export { checkMappings, checkPairedPorts, type MappingConfig, MappingIds, pairMappings, pairPartially } from "./mappings.js";
export type { PeerSession } from "./peer-session.js";
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
export type { ClientFlow, ConnectionOutput, LogLevel, Output, ReceiverOutput, SenderOutput } from "./outputs.js";
export {
  IPV4_UDP_OVERHEAD,
  IPV6_UDP_OVERHEAD,
  RECEIVER_DEFAULTS,
  type ReceiverConfig,
  ReceiverMachine,
} from "./receiver.js";
export { type SenderConfig, SenderMachine, type TargetFlow } from "./sender.js";
export type { Session } from "./session.js";
export {
  DROP_REASONS,
  type DropReason,
  type Drops,
  type FlowCounters,
  type LaneTotals,
  type MappingStats,
  type Stats,
  zeroDrops,
  zeroLaneTotals,
} from "./stats.js";
export { PEER_TEXT_MAX, peerText, peerWord, printable } from "./text.js";
export { encodeFrame, FrameWriter } from "./writer.js";
