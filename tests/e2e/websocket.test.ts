/**
 * End to end with real components: the built CLI (Node and Bun, each side on the other runtime in
 * turn) carried over WebSocket through nginx (Debian's nginx-light) as the usual reverse proxy and as
 * a TLS terminator (wss:// at nginx, ws:// behind it), and dialing through tinyproxy as the HTTP
 * CONNECT proxy (with and without Basic credentials, and refusing). nginx and tinyproxy run as child
 * processes with configs in temporary folders, on loopback; missing ones are installed only on CI
 * (root, CI=true), else these tests skip saying so. Needs `bun run build` first.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { spawnSync } from "node:child_process";
import { createSocket } from "node:dgram";
import { after, describe, it } from "node:test";
import { createCertificate, pemFingerprint } from "@mcudpt/core";
import {
  CLI,
  type CliProcess,
  eventually,
  freePort,
  has,
  killAll,
  RUNTIMES,
  type Runtime,
  startCli,
  startEcho,
  stopWith,
  udpRequest,
} from "../helpers/cli-process.js";
import { debianProgram } from "../helpers/debian.js";
import { killPeers, startNginx, startTinyproxy } from "../helpers/real-peers.js";

const TIMEOUT = { timeout: 120_000 };
after(() => {
  killAll();
  killPeers();
});

const runtimes = RUNTIMES.filter((runtime) => has(runtime));
/** Receiver and sender runtimes: each side on each runtime once (Node↔Node without Bun). */
const pairs: Array<[Runtime, Runtime]> =
  runtimes.length > 1
    ? [
        ["node", "bun"],
        ["bun", "node"],
      ]
    : [["node", "node"]];
const nginx = debianProgram("nginx", "nginx-light");
const tinyproxy = debianProgram("tinyproxy", "tinyproxy");
/** No proxy from the test machine's environment unless a test sets one. */
const NO_PROXY_ENV = { HTTPS_PROXY: "", https_proxy: "", ALL_PROXY: "", all_proxy: "", NO_PROXY: "", no_proxy: "" };

function certificate() {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = createCertificate({
    commonName: "nginx.test",
    publicKey,
    issuerKey: privateKey,
    altNames: ["localhost", "127.0.0.1"],
    notAfter: new Date(Date.now() + 86_400_000),
  });
  return {
    cert,
    key: privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    fingerprint: pemFingerprint(cert),
  };
}

async function startReceiver(
  runtime: Runtime,
  udpPort: number,
  tcp: string,
  extra: string[] = [],
): Promise<CliProcess> {
  const receiver = startCli(
    runtime,
    ["receiver", "--udp", `127.0.0.1:${udpPort}`, "--tcp", tcp, "--secret", "e2e", ...extra],
    NO_PROXY_ENV,
  );
  await eventually(
    () => /receiver listening/.test(receiver.stderr()),
    () => `receiver up:\n${receiver.stderr()}`,
  );
  return receiver;
}

function startSender(
  runtime: Runtime,
  targetPort: number,
  tcp: string,
  extra: string[] = [],
  env: NodeJS.ProcessEnv = {},
): CliProcess {
  return startCli(runtime, ["sender", "--udp", `127.0.0.1:${targetPort}`, "--tcp", tcp, "--secret", "e2e", ...extra], {
    ...NO_PROXY_ENV,
    ...env,
  });
}

async function accepted(sender: CliProcess, times = 1): Promise<void> {
  await eventually(
    () => sender.count(/accepted by receiver/) >= times,
    () => `sender accepted (${times}):\n${sender.stderr()}`,
    20_000,
  );
}

/** Fifty clients at once, each with its own socket: every reply a client gets is its own. */
async function fiftyClients(udpPort: number): Promise<void> {
  const clients = await Promise.all(
    Array.from({ length: 50 }, async () => {
      const socket = createSocket("udp4");
      await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
      const replies: string[] = [];
      socket.on("message", (message) => replies.push(message.toString()));
      return { socket, replies };
    }),
  );
  try {
    // Ten rounds per client, each re-sent until its reply came (loopback UDP may drop in a burst).
    await Promise.all(
      clients.map(async (client, i) => {
        for (let round = 0; round < 10; round++) {
          const message = `client ${i} round ${round}`;
          await eventually(
            () => {
              if (client.replies.includes(message)) return true;
              client.socket.send(message, udpPort, "127.0.0.1");
              return false;
            },
            `reply to ${message}`,
            20_000,
          );
        }
      }),
    );
    clients.forEach((client, i) => {
      for (const reply of client.replies)
        assert.match(reply, new RegExp(`^client ${i} round `), `client ${i} got ${reply}`);
    });
  } finally {
    for (const client of clients) client.socket.close();
  }
}

/** Datagrams of 0, 1, 1400 and 65,507 bytes come back intact. */
async function datagramSizes(udpPort: number): Promise<void> {
  const socket = createSocket("udp4");
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  try {
    for (const size of [0, 1, 1400, 65_507]) {
      const payload = Buffer.alloc(size, 0).map((_, i) => (i * 31 + size) & 0xff);
      let reply: Buffer | undefined;
      const onMessage = (message: Buffer) => (reply = message);
      socket.on("message", onMessage);
      await eventually(
        () => {
          if (reply !== undefined) return true;
          socket.send(payload, udpPort, "127.0.0.1");
          return false;
        },
        `the ${size}-byte datagram back`,
        20_000,
      );
      socket.off("message", onMessage);
      assert.equal(reply?.length, size);
      assert.ok(reply?.equals(payload), `${size} bytes intact`);
    }
  } finally {
    socket.close();
  }
}

describe("WebSocket behind nginx (built CLI)", { skip: nginx.skip }, () => {
  for (const [receiverRuntime, senderRuntime] of pairs) {
    it(
      `${receiverRuntime} receiver behind nginx, ${senderRuntime} sender over ws://: fifty clients, every datagram size, a reconnect after nginx reloads`,
      TIMEOUT,
      async () => {
        const echo = await startEcho();
        const [udpPort, backendPort, httpPort] = await Promise.all([freePort("udp"), freePort("tcp"), freePort("tcp")]);
        const proxy = await startNginx(nginx.path as string, { backendPort, httpPort });
        const receiver = await startReceiver(receiverRuntime, udpPort, `ws://127.0.0.1:${backendPort}/tunnel`);
        const sender = startSender(senderRuntime, echo.address().port, `ws://127.0.0.1:${httpPort}/tunnel`);
        try {
          await accepted(sender);
          await fiftyClients(udpPort);
          await datagramSizes(udpPort);
          // A reload retires the worker that carries the tunnel: the sender reconnects through the new one.
          proxy.reload();
          await eventually(
            () => /closed/.test(sender.stderr().split("accepted by receiver").at(-1) ?? ""),
            () => `the tunnel cut by the reload:\n${sender.stderr()}\n${proxy.log()}`,
            20_000,
          );
          await accepted(sender, 2);
          assert.equal(await udpRequest(udpPort, "after the reload"), "after the reload");
          assert.equal(sender.count(/connected to receiver ws:\/\/127\.0\.0\.1:\d+\/tunnel$/), 2);
          assert.equal((await stopWith(sender, "SIGTERM")).code, 0);
          assert.equal((await stopWith(receiver, "SIGTERM")).code, 0);
        } finally {
          echo.close();
          proxy.stop();
        }
      },
    );

    it(
      `${receiverRuntime} receiver on ws:// behind nginx terminating TLS, ${senderRuntime} sender on wss:// pinning nginx's certificate`,
      TIMEOUT,
      async () => {
        const echo = await startEcho();
        const cert = certificate();
        const [udpPort, backendPort, httpPort, tlsPort] = await Promise.all([
          freePort("udp"),
          freePort("tcp"),
          freePort("tcp"),
          freePort("tcp"),
        ]);
        const proxy = await startNginx(nginx.path as string, {
          backendPort,
          httpPort,
          tls: { port: tlsPort, cert: cert.cert, key: cert.key },
        });
        const receiver = await startReceiver(receiverRuntime, udpPort, `ws://127.0.0.1:${backendPort}/tunnel`);
        const sender = startSender(senderRuntime, echo.address().port, `wss://127.0.0.1:${tlsPort}/tunnel`, [
          "--tls-fingerprint",
          cert.fingerprint,
        ]);
        try {
          await accepted(sender);
          await fiftyClients(udpPort);
          await datagramSizes(udpPort);
          assert.match(sender.stderr(), /connected to receiver wss:\/\/127\.0\.0\.1:\d+\/tunnel/);
          assert.equal((await stopWith(sender, "SIGTERM")).code, 0);
          assert.equal((await stopWith(receiver, "SIGTERM")).code, 0);
        } finally {
          echo.close();
          proxy.stop();
        }
      },
    );
  }

  it("a sender pinning another certificate refuses nginx's for good (exit 1)", TIMEOUT, async () => {
    const cert = certificate();
    const [backendPort, httpPort, tlsPort] = await Promise.all([freePort("tcp"), freePort("tcp"), freePort("tcp")]);
    const proxy = await startNginx(nginx.path as string, {
      backendPort,
      httpPort,
      tls: { port: tlsPort, cert: cert.cert, key: cert.key },
    });
    try {
      const sender = startSender(runtimes[0], 9, `wss://127.0.0.1:${tlsPort}/tunnel`, [
        "--tls-fingerprint",
        certificate().fingerprint,
      ]);
      const exit = await sender.exited;
      assert.equal(exit.code, 1, sender.stderr());
      assert.match(sender.stderr(), /does not match the pinned/);
    } finally {
      proxy.stop();
    }
  });
});

describe("dialing through tinyproxy (built CLI)", { skip: tinyproxy.skip }, () => {
  for (const [receiverRuntime, senderRuntime] of pairs) {
    it(
      `${senderRuntime} sender through tinyproxy to a ${receiverRuntime} receiver: ws:// by --proxy and by HTTPS_PROXY, TLS over TCP, NO_PROXY`,
      TIMEOUT,
      async () => {
        const echo = await startEcho();
        const target = echo.address().port;
        const [udpPort, wsPort, tlsUdpPort, tlsPort, proxyPort] = await Promise.all([
          freePort("udp"),
          freePort("tcp"),
          freePort("udp"),
          freePort("tcp"),
          freePort("tcp"),
        ]);
        const proxy = await startTinyproxy(tinyproxy.path as string, { port: proxyPort });
        const wsReceiver = await startReceiver(receiverRuntime, udpPort, `ws://127.0.0.1:${wsPort}/tunnel`);
        const tlsReceiver = await startReceiver(receiverRuntime, tlsUdpPort, `127.0.0.1:${tlsPort}`, ["--tls"]);
        const url = `http://127.0.0.1:${proxyPort}`;
        try {
          const flag = startSender(senderRuntime, target, `ws://127.0.0.1:${wsPort}/tunnel`, ["--proxy", url]);
          await accepted(flag);
          assert.equal(await udpRequest(udpPort, "via --proxy"), "via --proxy");
          assert.match(
            flag.stderr(),
            new RegExp(`connected to receiver ws://127\\.0\\.0\\.1:${wsPort}/tunnel through proxy ${url}`),
          );
          await stopWith(flag, "SIGTERM");

          const env = startSender(senderRuntime, target, `ws://127.0.0.1:${wsPort}/tunnel`, [], { HTTPS_PROXY: url });
          await accepted(env);
          assert.equal(await udpRequest(udpPort, "via HTTPS_PROXY"), "via HTTPS_PROXY");
          assert.match(env.stderr(), /through proxy/);
          await stopWith(env, "SIGTERM");

          const tls = startSender(senderRuntime, target, `127.0.0.1:${tlsPort}`, ["--tls", "--proxy", url]);
          await accepted(tls);
          assert.equal(await udpRequest(tlsUdpPort, "TLS via CONNECT"), "TLS via CONNECT");
          await stopWith(tls, "SIGTERM");
          const tunnels = proxy.log().match(/Established connection to host "127\.0\.0\.1"/g)?.length ?? 0;
          assert.ok(tunnels >= 3, `tinyproxy carried the three tunnels:\n${proxy.log()}`);

          const exempt = startSender(senderRuntime, target, `ws://127.0.0.1:${wsPort}/tunnel`, [], {
            HTTPS_PROXY: url,
            NO_PROXY: "localhost,127.0.0.1",
          });
          await accepted(exempt);
          assert.doesNotMatch(exempt.stderr(), /through proxy/);
          await stopWith(exempt, "SIGTERM");
        } finally {
          await stopWith(wsReceiver, "SIGTERM");
          await stopWith(tlsReceiver, "SIGTERM");
          echo.close();
          proxy.stop();
        }
      },
    );

    // tinyproxy answers wrong credentials with 401 (not 407) on CONNECT; the conformance suite's proxy sends 407.
    it(
      `${senderRuntime} sender through tinyproxy with Basic credentials; refusals are one line and retried`,
      TIMEOUT,
      async () => {
        const echo = await startEcho();
        const [udpPort, wsPort, authPort, closedPort, strictPort] = await Promise.all([
          freePort("udp"),
          freePort("tcp"),
          freePort("tcp"),
          freePort("tcp"),
          freePort("tcp"),
        ]);
        const auth = await startTinyproxy(tinyproxy.path as string, {
          port: authPort,
          basicAuth: { user: "alice", password: "s3cret" },
        });
        const strict = await startTinyproxy(tinyproxy.path as string, { port: strictPort, connectPorts: [443] });
        const receiver = await startReceiver(receiverRuntime, udpPort, `ws://127.0.0.1:${wsPort}/tunnel`);
        const ws = `ws://127.0.0.1:${wsPort}/tunnel`;
        try {
          const good = startSender(senderRuntime, echo.address().port, ws, [
            "--proxy",
            `http://alice:s3cret@127.0.0.1:${authPort}`,
          ]);
          await accepted(good);
          assert.equal(await udpRequest(udpPort, "with credentials"), "with credentials");
          assert.doesNotMatch(good.stderr(), /s3cret/, "the password is never logged");
          await stopWith(good, "SIGTERM");

          const refusals: Array<[string[], RegExp]> = [
            [
              ["--proxy", `http://alice:wrong@127.0.0.1:${authPort}`],
              new RegExp(
                `proxy http://alice:\\*\\*\\*@127\\.0\\.0\\.1:${authPort} refused the tunnel to 127\\.0\\.0\\.1:${wsPort}: HTTP 40[17] .*\\(it refused the credentials\\)`,
              ),
            ],
            [
              ["--proxy", `http://127.0.0.1:${strictPort}`],
              new RegExp(
                `proxy http://127\\.0\\.0\\.1:${strictPort} refused the tunnel to 127\\.0\\.0\\.1:${wsPort}: HTTP 403`,
              ),
            ],
          ];
          for (const [extra, pattern] of refusals) {
            const refused = startSender(senderRuntime, echo.address().port, ws, extra);
            await eventually(
              () => refused.count(pattern) >= 2 && refused.count(/reconnecting in/) >= 2,
              () => `two refusals, retried:\n${refused.stderr()}`,
              20_000,
            );
            const line =
              refused
                .stderr()
                .split("\n")
                .find((l) => pattern.test(l)) ?? "";
            assert.match(line, /cannot connect to receiver .*; reconnecting in/);
            assert.doesNotMatch(refused.stderr(), /^\s+at /m, "no stack trace");
            assert.equal(refused.exit, undefined, "the sender keeps retrying");
            assert.equal((await stopWith(refused, "SIGTERM")).code, 0);
          }

          // A tunnel the proxy cannot open (nothing listens there): its 5xx, one line, retried.
          const unreachable = startSender(senderRuntime, echo.address().port, `ws://127.0.0.1:${closedPort}/tunnel`, [
            "--proxy",
            `http://alice:s3cret@127.0.0.1:${authPort}`,
          ]);
          await eventually(
            () => unreachable.count(/refused the tunnel to .*: HTTP 5\d\d/) >= 2,
            () => `the proxy's 5xx, retried:\n${unreachable.stderr()}`,
            20_000,
          );
          assert.equal((await stopWith(unreachable, "SIGTERM")).code, 0);
        } finally {
          await stopWith(receiver, "SIGTERM");
          echo.close();
          auth.stop();
          strict.stop();
        }
      },
    );
  }
});

describe("ws://, --proxy, --ws-header, --ws-host on the command line (built CLI)", () => {
  const cases: Array<[string[], RegExp]> = [
    [["sender", "--tcp", "ws://h:1/x", "--ws-header", "Host: a"], /--ws-header Host: use --ws-host NAME/],
    [["sender", "--tcp", "ws://h:1/x", "--ws-header", "X-A: b\u0007"], /the value must be printable ASCII/],
    [["sender", "--tcp", "ws://h:1/x", "--ws-header", "no colon"], /is not 'NAME: VALUE'/],
    [["sender", "--tcp", "ws://h:1/x", "--ws-header", "Sec-WebSocket-Key: x"], /sets this header itself/],
    [["sender", "--tcp", "h:1", "--ws-host", "cdn.example"], /--ws-host needs a ws:\/\/ or wss:\/\/ address/],
    [["sender", "--tcp", "ws://h:1/x", "--ws-host", "a b"], /--ws-host: "a b" is not a host name/],
    [["sender", "--tcp", "ws://h:1/x", "--tls"], /--tls with a ws:\/\/ address: write wss:\/\//],
    [["sender", "--tcp", "ws://:1/x"], /names no host to dial/],
    [["sender", "--tcp", "ftp://h:1"], /only ws:\/\/ and wss:\/\/ URLs/],
    [["sender", "--tcp", "ws://h:1/x", "--proxy", "https://p:1"], /--proxy: proxy scheme "https" is not supported/],
    [
      ["receiver", "--tcp", "ws://:1/x", "--proxy", "http://p:1"],
      /--proxy is for the dialing side: this end listens for the sender/,
    ],
    [["receiver", "--tcp", "ws://:1/x?q=1"], /a listening address has no query/],
    [["receiver", "--tcp", "ws://:99999/x"], /port 99999 .* is out of range/],
  ];
  for (const [args, pattern] of cases) {
    it(`${args.join(" ")}: one line, exit 2`, () => {
      const result = spawnSync("node", [CLI, ...args, "--secret", "s"], { encoding: "utf8", timeout: 20_000 });
      assert.equal(result.status, 2, result.stderr);
      assert.match(result.stderr, pattern);
      assert.equal(result.stderr.trim().split("\n").length, 1, result.stderr);
    });
  }

  it("a bad HTTPS_PROXY is one line at start-up", () => {
    const result = spawnSync("node", [CLI, "sender", "--tcp", "ws://127.0.0.1:1/x", "--secret", "s"], {
      encoding: "utf8",
      timeout: 20_000,
      env: { ...process.env, ...NO_PROXY_ENV, HTTPS_PROXY: "gopher://p:1" },
    });
    assert.notEqual(result.status, 0);
    assert.match(result.stderr, /the environment's HTTPS_PROXY: proxy scheme "gopher" is not supported/);
    assert.doesNotMatch(result.stderr, /^\s+at /m);
  });
});
