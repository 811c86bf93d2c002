/**
 * libc through bun:ffi, for what Bun's socket API lacks (socket buffer sizes, segmented sends).
 * One place knows where libc lives and how to open it.
 */
import type { FFIFunction, Library } from "bun:ffi";

/** The names dlopen tries in turn, per platform (glibc, then musl). */
const LIBC_NAMES: Partial<Record<NodeJS.Platform, readonly string[]>> = {
  linux: ["libc.so.6", "libc.so", "libc.musl-x86_64.so.1", "libc.musl-aarch64.so.1"],
  darwin: ["libc.dylib", "/usr/lib/libSystem.B.dylib"],
  freebsd: ["libc.so.7"],
};

/** This platform's libc with `symbols`; undefined where it cannot be opened (or no bun:ffi). */
export async function openLibc<S extends Record<string, FFIFunction>>(symbols: S): Promise<Library<S> | undefined> {
  const names = LIBC_NAMES[process.platform];
  if (!names) return undefined;
  try {
    const { dlopen } = await import("bun:ffi");
    for (const name of names) {
      try {
        return dlopen(name, symbols);
      } catch {}
    }
  } catch {}
  return undefined;
}
