/**
 * An error the user can fix (a bad flag value, a port in use, a name that does not resolve).
 * The CLI prints its message as one line and exits non-zero; anything else is a bug.
 */
export class UserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UserError";
  }
}

/** The message of any thrown value, without a stack. */
export function messageOf(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code && !error.message.includes(code) ? `${error.message} (${code})` : error.message;
  }
  return String(error);
}

/**
 * Why a file could not be read, in a few words ("no such file (ENOENT)") rather than the runtime's
 * message, which repeats the path the caller already names.
 */
export function fileFailure(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const words: Record<string, string> = {
    ENOENT: "no such file",
    EACCES: "permission denied",
    EPERM: "permission denied",
    EISDIR: "it is a directory",
    ENOTDIR: "a part of the path is not a directory",
  };
  return code && words[code] ? `${words[code]} (${code})` : messageOf(error);
}

/**
 * Why a port could not be bound or listened on, in the same words whichever runtime failed: Bun
 * says "Failed to listen at 127.0.0.1 (EADDRINUSE)" or "bind EADDRINUSE 127.0.0.1", Node "listen
 * EADDRINUSE: address already in use 127.0.0.1:53". Unknown codes keep the runtime's message.
 */
export function bindFailure(error: unknown, port?: number): string {
  const code = (error as { code?: unknown } | null)?.code;
  switch (code) {
    case "EADDRINUSE":
      return "address already in use (EADDRINUSE)";
    case "EADDRNOTAVAIL":
      return "that address is not on this host (EADDRNOTAVAIL)";
    case "EACCES":
    case "EPERM":
      return port !== undefined && port > 0 && port < 1024
        ? `permission denied (${code}): ports below 1024 need root or CAP_NET_BIND_SERVICE`
        : `permission denied (${code})`;
    default:
      return messageOf(error);
  }
}
