/**
 * The carrier part of the command line: a ws:// or wss:// address in --tcp, --connect or --listen
 * (the WebSocket carrier), --ws-header and --ws-host for the dialing side's upgrade request, and
 * --proxy (HTTP CONNECT or SOCKS5) for the dialing side. wss:// is TLS under the WebSocket: it takes
 * the --tls options (and needs no --tls of its own). --tcp-buffer sizes the kernel buffers of the
 * tunnel's TCP connections, on either side.
 */
import {
  type CarrierOptions,
  type HostPort,
  messageOf,
  parseHostPort,
  parseProxyUrl,
  sourceMatcher,
  UserError,
  type WebSocketCarrier,
} from "@mcudpt/core";
import type { ArgsDef } from "citty";
import { byteSize, ORIGINAL_DEFAULT_ADDRESS, type RawArgs, repeated, stringArg } from "./options.js";

export const carrierArgs = {
  proxy: {
    type: "string",
    description:
      "Dialing side: reach the peer through this proxy, http://[USER:PASS@]HOST:PORT (HTTP CONNECT) or socks5://[USER:PASS@]HOST:PORT; none: never (default for ws:// and wss://: $HTTPS_PROXY or $ALL_PROXY unless $NO_PROXY lists the host)",
    valueHint: "URL",
  },
  "ws-header": {
    type: "string",
    description:
      "Dialing a ws:// or wss:// address: an extra header for the upgrade request; repeatable (--ws-header 'Authorization: Bearer …')",
    valueHint: "'NAME: VALUE'",
  },
  "tcp-buffer": {
    type: "string",
    description:
      "Kernel send and receive buffer (SO_SNDBUF/SO_RCVBUF) of each tunnel TCP connection, dialed or accepted, e.g. 4m; turns the kernel's autotuning off for them (default: autotuned; the kernel caps it at net.core.wmem_max/rmem_max; the node transport cannot set it)",
    valueHint: "BYTES",
  },
  "ws-host": {
    type: "string",
    description:
      "Dialing a ws:// or wss:// address: the Host header and TLS server name (SNI) to send instead of the address's host, e.g. a CDN's name while dialing one of its addresses",
    valueHint: "NAME[:PORT]",
  },
  "ws-trusted-proxy": {
    type: "string",
    description:
      "Listening on ws:// or wss:// behind a reverse proxy: the proxies (addresses, CIDR blocks) whose X-Forwarded-For or Forwarded header names the peer; the per-address handshake limit and from= on authorized_keys lines then see the real peer (e.g. 127.0.0.1,::1)",
    valueHint: "LIST",
  },
} satisfies ArgsDef;

/** A --tcp/--connect/--listen value: where, and over which carrier. */
export interface CarrierAddress {
  address: HostPort;
  webSocket?: { path: string; secure: boolean };
}

const URL_FORM = /^(wss?):\/\/(\[[^\]]*\]|[^/:?#[\]]*)(?::([^/?#]*))?([/?][^#]*)?$/i;

/** `[HOST]:PORT`, or `ws://[HOST][:PORT]/PATH` / `wss://…` (port 80 / 443 by default, path "/"). */
export function parseCarrierAddress(text: string, flag: string, listening: boolean): CarrierAddress {
  const value = text.trim();
  if (!/^wss?:\/\//i.test(value)) {
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) {
      throw new UserError(`${flag}: "${text}": only ws:// and wss:// URLs are addresses here (or write [HOST]:PORT)`);
    }
    return { address: parseHostPort(value, flag) };
  }
  const match = URL_FORM.exec(value);
  if (!match) throw new UserError(`${flag}: "${text}" is not ws://[HOST][:PORT]/PATH`);
  const secure = match[1].toLowerCase() === "wss";
  const host = match[2];
  const port = match[3] ?? String(secure ? 443 : 80);
  const path = match[4] === undefined ? "/" : match[4].startsWith("?") ? `/${match[4]}` : match[4];
  if (!/^[\x21-\x7e]+$/.test(path))
    throw new UserError(`${flag}: the path in "${text}" must be printable, without spaces`);
  if (listening && path.includes("?")) {
    throw new UserError(`${flag}: a listening address has no query ("${text}"): the path alone is matched`);
  }
  if (!listening && host === "") throw new UserError(`${flag}: "${text}" names no host to dial`);
  return { address: parseHostPort(`${host}:${port}`, flag), webSocket: { path, secure } };
}

/** The default :1937 when the flag is absent. */
export function carrierAddressArg(args: RawArgs, name: string, listening: boolean): CarrierAddress | undefined {
  const text = stringArg(args, name);
  return text === undefined ? undefined : parseCarrierAddress(text, `--${name}`, listening);
}

export function defaultCarrierAddress(): CarrierAddress {
  return { address: parseHostPort(ORIGINAL_DEFAULT_ADDRESS, "--tcp") };
}

/** Header names the upgrade itself sets, or that would change how the request is read. */
const RESERVED_HEADERS = new Set([
  "host",
  "upgrade",
  "connection",
  "content-length",
  "transfer-encoding",
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-accept",
  "sec-websocket-extensions",
  "sec-websocket-protocol",
]);

function parseHeader(text: string): [string, string] {
  const colon = text.indexOf(":");
  const name = colon < 0 ? "" : text.slice(0, colon).trim();
  const value = colon < 0 ? "" : text.slice(colon + 1).trim();
  if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) {
    throw new UserError(`--ws-header "${text}" is not 'NAME: VALUE' (a header name is letters, digits and -)`);
  }
  if (!/^[\x20-\x7e\t]*$/.test(value)) {
    throw new UserError(`--ws-header ${name}: the value must be printable ASCII on one line`);
  }
  if (RESERVED_HEADERS.has(name.toLowerCase())) {
    throw new UserError(
      name.toLowerCase() === "host"
        ? "--ws-header Host: use --ws-host NAME (it also sets the TLS server name)"
        : `--ws-header ${name}: the WebSocket upgrade sets this header itself`,
    );
  }
  return [name, value];
}

/**
 * The carrier options for the TCP side this end takes (`dialing` or not), checking that the
 * dialing side's flags are not given to a listening end and that --ws-* come with a ws address.
 */
export function carrierFor(
  args: RawArgs,
  rawArgs: readonly string[],
  address: CarrierAddress,
  dialing: boolean,
  side: string,
): CarrierOptions | undefined {
  const headers = repeated(rawArgs, "ws-header");
  const wsHost = stringArg(args, "ws-host");
  const proxyText = stringArg(args, "proxy");
  const trustedProxies = stringArg(args, "ws-trusted-proxy");
  if (!dialing) {
    const given = proxyText !== undefined ? "proxy" : headers.length > 0 ? "ws-header" : wsHost ? "ws-host" : undefined;
    if (given) throw new UserError(`--${given} is for the dialing side: this end ${side}`);
  } else if (trustedProxies !== undefined) {
    throw new UserError(`--ws-trusted-proxy is for the listening side: this end ${side}`);
  }
  if (trustedProxies !== undefined) {
    if (!address.webSocket) throw new UserError("--ws-trusted-proxy needs a ws:// or wss:// address to listen on");
    try {
      sourceMatcher(trustedProxies);
    } catch (error) {
      throw new UserError(`--ws-trusted-proxy: ${messageOf(error)}`);
    }
  }
  if (!address.webSocket) {
    if (headers.length > 0) throw new UserError("--ws-header needs a ws:// or wss:// address to dial");
    if (wsHost !== undefined) throw new UserError("--ws-host needs a ws:// or wss:// address to dial");
  }
  if (wsHost !== undefined && !/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?$/.test(wsHost)) {
    throw new UserError(`--ws-host: "${wsHost}" is not a host name (NAME or NAME:PORT)`);
  }
  const proxy =
    proxyText === undefined
      ? undefined
      : proxyText.toLowerCase() === "none"
        ? ("none" as const)
        : parseProxyUrl(proxyText, "--proxy");
  const tcpBufferBytes = tcpBufferOption(args);
  if (!address.webSocket && proxy === undefined && tcpBufferBytes === undefined) return undefined;
  const webSocket: WebSocketCarrier | undefined = address.webSocket && {
    path: address.webSocket.path,
    secure: address.webSocket.secure,
    host: wsHost,
    headers: headers.map(parseHeader),
    trustedProxies,
  };
  return { webSocket, proxy, tcpBufferBytes };
}

/** The --tcp-buffer value in bytes (64k to 1g), or undefined for the kernel's autotuned sizes. */
export function tcpBufferOption(args: RawArgs): number | undefined {
  return stringArg(args, "tcp-buffer") === undefined ? undefined : byteSize(args, "tcp-buffer", 0);
}

/** wss:// means TLS; --tls with ws:// is a contradiction worth a line. */
export function tlsArgsFor(args: RawArgs, address: CarrierAddress): RawArgs {
  if (!address.webSocket) return args;
  if (address.webSocket.secure) return { ...args, tls: true };
  if (args.tls) throw new UserError("--tls with a ws:// address: write wss:// for WebSocket over TLS");
  return args;
}
