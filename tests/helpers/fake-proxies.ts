/**
 * Small proxies for the conformance suites, on node:net (the same under every transport tested):
 * an HTTP CONNECT proxy (optionally wanting Basic credentials, refusing with a status, or answering
 * with an endless head) and a SOCKS5 proxy (optionally wanting user/password). The e2e suites use the
 * real thing (tinyproxy); these let every transport's tunnel code run under bun test and real Node.
 */
import { connect, createServer, type Server, type Socket } from "node:net";

export interface FakeProxy {
  port: number;
  /** What each client asked for: "HOST:PORT" per tunnel requested. */
  requests: string[];
  close(): Promise<void>;
}

function track(server: Server, sockets: Set<Socket>, requests: string[]): Promise<FakeProxy> {
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        port: (server.address() as { port: number }).port,
        requests,
        close: () =>
          new Promise((done) => {
            for (const socket of sockets) socket.destroy();
            server.close(() => done());
          }),
      }),
    ),
  );
}

/**
 * Joins `client` to a connection to host:port, `reply` first. When the peer speaks within 30 ms its
 * first bytes go out in the same write as the reply: a dialer must take a peer's bytes that follow
 * the proxy's reply in one chunk.
 */
function splice(client: Socket, host: string, port: number, sockets: Set<Socket>, reply: Buffer, rest: Buffer) {
  const upstream = connect({ host, port });
  sockets.add(upstream);
  upstream.on("error", () => client.destroy());
  client.on("error", () => upstream.destroy());
  upstream.on("close", () => client.destroy());
  client.on("close", () => upstream.destroy());
  upstream.once("connect", () => {
    let replied = false;
    const timer = setTimeout(() => {
      if (replied) return;
      replied = true;
      client.write(reply);
    }, 30);
    upstream.on("data", (chunk: Buffer) => {
      if (replied) {
        client.write(chunk);
        return;
      }
      replied = true;
      clearTimeout(timer);
      client.write(Buffer.concat([reply, chunk]));
    });
    if (rest.length > 0) upstream.write(rest);
    client.on("data", (chunk: Buffer) => upstream.write(chunk));
  });
}

export interface ConnectProxyOptions {
  /** "user:pass" the client must send as Basic credentials; others get 407. */
  credentials?: string;
  /** Refuse every CONNECT with this status line ("403 Forbidden", "502 Bad Gateway"). */
  refuse?: string;
  /** Answer with a head that never ends (20 KiB of headers). */
  endlessHead?: boolean;
}

export async function startConnectProxy(options: ConnectProxyOptions = {}): Promise<FakeProxy> {
  const sockets = new Set<Socket>();
  const requests: string[] = [];
  const server = createServer((client) => {
    sockets.add(client);
    client.on("error", () => {});
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      client.off("data", onData);
      const lines = head.subarray(0, end).toString("latin1").split("\r\n");
      const rest = head.subarray(end + 4);
      const [method, authority] = lines[0].split(" ");
      requests.push(authority);
      const auth = lines.find((line) => /^proxy-authorization:/i.test(line))?.split(/:\s*/)[1];
      if (options.endlessHead) {
        client.write(`HTTP/1.1 200 OK\r\nX-Filler: ${"x".repeat(20_000)}`);
        return;
      }
      if (options.refuse) {
        client.end(`HTTP/1.1 ${options.refuse}\r\nContent-Length: 0\r\n\r\n`);
        return;
      }
      if (options.credentials && auth !== `Basic ${Buffer.from(options.credentials).toString("base64")}`) {
        client.end(
          'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n',
        );
        return;
      }
      if (method !== "CONNECT") {
        client.end("HTTP/1.1 405 Method Not Allowed\r\n\r\n");
        return;
      }
      const colon = authority.lastIndexOf(":");
      const host = authority.slice(0, colon).replace(/^\[(.*)\]$/, "$1");
      splice(
        client,
        host,
        Number(authority.slice(colon + 1)),
        sockets,
        Buffer.from("HTTP/1.1 200 Connection established\r\n\r\n"),
        rest,
      );
    };
    client.on("data", onData);
  });
  return track(server, sockets, requests);
}

/** SOCKS5 (no auth, or user/password when `credentials` is "user:pass"). */
export async function startSocks5Proxy(options: { credentials?: string } = {}): Promise<FakeProxy> {
  const sockets = new Set<Socket>();
  const requests: string[] = [];
  const server = createServer((client) => {
    sockets.add(client);
    client.on("error", () => {});
    let buffer = Buffer.alloc(0);
    let stage: "greeting" | "auth" | "connect" = "greeting";
    const onData = (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        if (stage === "greeting") {
          if (buffer.length < 2 || buffer.length < 2 + buffer[1]) return;
          const methods = [...buffer.subarray(2, 2 + buffer[1])];
          buffer = buffer.subarray(2 + buffer[1]);
          const wanted = options.credentials ? 2 : 0;
          if (!methods.includes(wanted)) {
            client.end(Buffer.from([5, 0xff]));
            return;
          }
          client.write(Buffer.from([5, wanted]));
          stage = wanted === 2 ? "auth" : "connect";
        } else if (stage === "auth") {
          if (buffer.length < 2) return;
          const ulen = buffer[1];
          if (buffer.length < 3 + ulen || buffer.length < 3 + ulen + buffer[2 + ulen]) return;
          const plen = buffer[2 + ulen];
          const given = `${buffer.subarray(2, 2 + ulen)}:${buffer.subarray(3 + ulen, 3 + ulen + plen)}`;
          buffer = buffer.subarray(3 + ulen + plen);
          if (given !== options.credentials) {
            client.end(Buffer.from([1, 1]));
            return;
          }
          client.write(Buffer.from([1, 0]));
          stage = "connect";
        } else {
          if (buffer.length < 5) return;
          const type = buffer[3];
          const length = type === 1 ? 4 : type === 4 ? 16 : 1 + buffer[4];
          if (buffer.length < 4 + length + 2) return;
          let host: string;
          if (type === 1) host = [...buffer.subarray(4, 8)].join(".");
          else if (type === 3) host = buffer.subarray(5, 5 + buffer[4]).toString();
          else host = "::1";
          const port = buffer.readUInt16BE(4 + length);
          const rest = buffer.subarray(4 + length + 2);
          client.off("data", onData);
          requests.push(`${host}:${port}`);
          const reply = Buffer.from([5, 0, 0, 1, 127, 0, 0, 1, 0, 0]);
          splice(client, host === "localhost" ? "127.0.0.1" : host, port, sockets, reply, rest);
          return;
        }
      }
    };
    client.on("data", onData);
  });
  return track(server, sockets, requests);
}
