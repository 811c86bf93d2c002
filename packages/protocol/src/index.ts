export * from "./frames.js";
export { FrameDecoder, describeStranger, type DecoderOptions } from "./decoder.js";
export { FrameWriter, encodeFrame } from "./writer.js";
export { formatIPv4, formatIPv6, ipFamily, parseIPv4, parseIPv6 } from "./address.js";
export { bytesEqual, concatBytes, fromHex, toHex, utf8 } from "./bytes.js";
export type { CryptoProvider, Side } from "./link.js";
export {
  type ClientFlow,
  type CommonConfig,
  DEFAULTS,
  type DropReason,
  type LogLevel,
  type Output,
  type Stats,
} from "./endpoint.js";
export { ReceiverMachine, type ReceiverConfig } from "./receiver.js";
export { SenderMachine, type SenderConfig, type TargetFlow } from "./sender.js";
export type { FlowCounters } from "./flow-table.js";
