/**
 * bindFailure (src/errors.ts): a port that cannot be bound is told in the same words whichever
 * runtime failed, by the error's code; the privileged-port hint only for ports below 1024.
 */
import { describe, expect, test } from "bun:test";
import { bindFailure } from "../src/errors.ts";

const failed = (message: string, code?: string) => Object.assign(new Error(message), code ? { code } : {});

describe("bindFailure", () => {
  test("Bun's and Node's EADDRINUSE read the same", () => {
    for (const error of [
      failed("Failed to listen at 127.0.0.1", "EADDRINUSE"),
      failed("bind EADDRINUSE 127.0.0.1", "EADDRINUSE"),
      failed("listen EADDRINUSE: address already in use 127.0.0.1:53", "EADDRINUSE"),
    ])
      expect(bindFailure(error, 53)).toBe("address already in use (EADDRINUSE)");
  });

  test("a privileged port says what it needs; another port only that permission was denied", () => {
    expect(bindFailure(failed("bind EACCES 0.0.0.0", "EACCES"), 53)).toBe(
      "permission denied (EACCES): ports below 1024 need root or CAP_NET_BIND_SERVICE",
    );
    expect(bindFailure(failed("listen EACCES", "EACCES"), 5353)).toBe("permission denied (EACCES)");
  });

  test("an address not on this host; any other error keeps the runtime's message and code", () => {
    expect(bindFailure(failed("bind EADDRNOTAVAIL 10.9.9.9", "EADDRNOTAVAIL"))).toBe(
      "that address is not on this host (EADDRNOTAVAIL)",
    );
    expect(bindFailure(failed("something odd", "EINVAL"))).toBe("something odd (EINVAL)");
    expect(bindFailure("not an error")).toBe("not an error");
  });
});
