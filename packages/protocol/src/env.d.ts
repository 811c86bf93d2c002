// The protocol package is built without any runtime's type definitions (no DOM, no node, no Bun), so
// that nothing runtime-specific can creep in. These two WHATWG encoders exist in every JS runtime.
declare class TextEncoder {
  encode(input: string): Uint8Array;
  encodeInto(input: string, dest: Uint8Array): { read: number; written: number };
}
declare class TextDecoder {
  constructor(label?: string, options?: { fatal?: boolean; ignoreBOM?: boolean });
  decode(input: Uint8Array): string;
}
