/** `[HOST]:PORT` as the original mcudpt and ssh users write it: ":53", "host:53", "[::1]:53". */
import { ipFamily } from "@mcudpt/protocol";
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
