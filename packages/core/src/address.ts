/** `[HOST]:PORT` as the original mcudpt and ssh users write it: ":53", "host:53", "[::1]:53". */
import { ipFamily, MAX_MAPPING_PORTS } from "@mcudpt/protocol";
import { UserError } from "./errors.js";

export interface HostPort {
  /** Host name or IP literal; "" when the text gave none (":53"). */
  host: string;
  port: number;
}

export function parseHostPort(text: string, flag: string, options: { allowPortZero?: boolean } = {}): HostPort {
  const value = text.trim();
  let host: string;
  let portText: string;
  if (value.startsWith("[")) {
    const close = value.indexOf("]");
    if (close < 0 || value[close + 1] !== ":") throw new UserError(`${flag}: "${text}" is not [IPv6]:PORT`);
    host = value.slice(1, close);
    portText = value.slice(close + 2);
    if (ipFamily(host) !== 6) throw new UserError(`${flag}: "${host}" in "${text}" is not an IPv6 address`);
  } else {
    const colon = value.lastIndexOf(":");
    if (colon < 0) {
      // A bare number is a port without its colon (`--udp 21243`): say how to write it.
      if (/^\d{1,5}$/.test(value))
        throw new UserError(`${flag}: "${text}" is a port alone; write ":${value}" (or HOST:${value})`);
      throw new UserError(`${flag}: "${text}" has no port; write HOST:PORT or :PORT`);
    }
    host = value.slice(0, colon);
    portText = value.slice(colon + 1);
    if (host.includes(":"))
      throw new UserError(`${flag}: write IPv6 addresses in brackets, e.g. [${host}]:${portText}`);
  }
  if (!/^\d{1,5}$/.test(portText)) throw new UserError(`${flag}: port "${portText}" in "${text}" is not a number`);
  const port = Number(portText);
  const min = options.allowPortZero ? 0 : 1;
  if (port < min || port > 65535)
    throw new UserError(`${flag}: port ${port} in "${text}" is out of range (${min}-65535)`);
  if (host !== "" && !/^[A-Za-z0-9._:%-]+$/.test(host))
    throw new UserError(`${flag}: "${host}" in "${text}" is not a valid host name`);
  return { host, port };
}

/** The text form of an address for log lines. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** `[HOST]:PORT` or `[HOST]:FIRST-LAST`, a port range: consecutive ports from `port`. */
export interface HostPortRange extends HostPort {
  /** How many ports from `port` (1: a single port). */
  ports: number;
}

/**
 * `[HOST]:PORT`, or `[HOST]:FIRST-LAST` for a port range (`:27015-27030`, 16 ports; at most
 * MAX_MAPPING_PORTS, real ports only: a range of ephemeral ports could not be consecutive).
 */
export function parseHostPortRange(
  text: string,
  flag: string,
  options: { allowPortZero?: boolean } = {},
): HostPortRange {
  const range = /^(.*:)(\d{1,5})-(\d{1,5})$/.exec(text.trim());
  if (!range) return { ...parseHostPort(text, flag, options), ports: 1 };
  // Port 0 asks the kernel for any free port: n of them would not be consecutive.
  if (Number(range[2]) === 0)
    throw new UserError(`${flag}: the range "${text}" starts at port 0; a range needs real ports`);
  const first = parseHostPort(range[1] + range[2], flag);
  const last = Number(range[3]);
  if (last > 65535) throw new UserError(`${flag}: port ${last} in "${text}" is out of range (1-65535)`);
  if (last <= first.port)
    throw new UserError(`${flag}: the range "${text}" must end above its first port (FIRST-LAST, e.g. 27015-27030)`);
  const ports = last - first.port + 1;
  if (ports > MAX_MAPPING_PORTS)
    throw new UserError(`${flag}: the range "${text}" has ${ports} ports; at most ${MAX_MAPPING_PORTS}`);
  return { ...first, ports };
}

/** The text form of an address or a port range for log lines: "host:53", ":27015-27030". */
export function formatHostPorts(host: string, port: number, ports = 1): string {
  const first = formatHostPort(host, port);
  return ports > 1 ? `${first}-${port + ports - 1}` : first;
}
