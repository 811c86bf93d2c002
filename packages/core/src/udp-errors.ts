/**
 * UDP send errors that are not the fault of the datagram they were returned for.
 *
 * Linux keeps one pending error per socket (sk_err). An ICMP error (port unreachable from a client
 * that left, host unreachable...) sets it on a connected socket, and on any socket with
 * IP_RECVERR/IPV6_RECVERR (Bun sets both on every UDP socket). The NEXT send or receive on that
 * socket returns it and clears it, whatever that send's destination: a reply to a live client
 * fails with ECONNREFUSED because another client vanished. sendmmsg stops at that datagram.
 * These are the codes ICMP errors become (icmp_err_convert, icmpv6_err_convert), plus ENETDOWN;
 * EMSGSIZE is one of them (ICMP fragmentation needed / packet too big) unless the datagram itself
 * is larger than UDP allows (udpPayloadLimit), which is the datagram's own failure.
 *
 * The same codes can also be a datagram's own failure (no route: ENETUNREACH; broadcast without
 * SO_BROADCAST: EACCES), so a transport retries such a datagram a bounded number of times: a pending
 * error is gone after the failed attempt (the retry goes out), a failure of the datagram's own
 * repeats (it is dropped, as any refused datagram).
 */

const PENDING_SOCKET_ERRORS: ReadonlySet<string> = new Set([
  "ECONNREFUSED", // port unreachable
  "EHOSTUNREACH", // host unreachable, admin prohibited, time exceeded
  "ENETUNREACH", // network unreachable / no route
  "EHOSTDOWN", // host unknown
  "ENETDOWN",
  "ENONET", // host isolated
  "EPROTO", // parameter problem
  "ENOPROTOOPT", // protocol unreachable
  "EOPNOTSUPP", // source route failed
  "EACCES", // IPv6 administratively prohibited, policy failure, reject route
  "EMSGSIZE", // fragmentation needed / packet too big (when the datagram itself fits)
]);

/** Attempts a transport makes for one datagram whose send failed with a possibly pending error. */
export const MAX_UDP_SEND_ATTEMPTS = 3;

/** Whether `error` (a send failure) may be a socket's pending error rather than the datagram's own. */
export function isPendingSocketError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && PENDING_SOCKET_ERRORS.has(code);
}

/**
 * The largest UDP payload toward `address`: 65 507 bytes to IPv4 (also as ::ffff:a.b.c.d), 65 527 to
 * IPv6. A larger datagram fails with EMSGSIZE on its own account.
 */
export function udpPayloadLimit(address: string): number {
  return address.includes(":") && !/^::ffff:\d/i.test(address) ? 65_527 : 65_507;
}
