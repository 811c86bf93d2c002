/** Which local address a listening socket binds, for both the UDP and the TCP side. */
import { messageOf, UserError } from "./errors.js";
import type { Resolver } from "./resolve.js";

/** "" (as in ":53") binds all interfaces, IPv6 and IPv4, like the original. */
export async function bindAddress(resolver: Resolver, host: string, what: string): Promise<string> {
  if (host === "" || host === "*") return "::";
  try {
    return (await resolver.resolve(host)).address;
  } catch (error) {
    throw new UserError(`${what}: cannot resolve "${host}": ${messageOf(error)}`);
  }
}

/**
 * Binds the IPv6 wildcard (dual-stack: IPv4 clients arrive as ::ffff:a.b.c.d), or the IPv4 wildcard
 * on a host without IPv6. Calls `bind` with the host actually used.
 */
export async function withIPv4Fallback<T>(host: string, bind: (host: string) => Promise<T>): Promise<T> {
  if (host !== "::") return bind(host);
  try {
    return await bind("::");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException)?.code;
    if (code !== "EAFNOSUPPORT" && code !== "EADDRNOTAVAIL" && code !== "EPROTONOSUPPORT") throw error;
    return bind("0.0.0.0");
  }
}
