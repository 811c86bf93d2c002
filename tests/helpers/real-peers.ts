/**
 * nginx and tinyproxy as child processes for the end-to-end suites: configs in a temporary folder,
 * ephemeral loopback ports, not daemonized (the child is the master process), stopped with SIGKILL on
 * every exit path (stop(), or killPeers() from an after() hook).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { eventually } from "./cli-process.js";

const running = new Set<{ child: ChildProcess; dir: string }>();

/** Kills every peer still running and removes its folder. */
export function killPeers(): void {
  for (const peer of running) {
    if (peer.child.exitCode === null && peer.child.signalCode === null) peer.child.kill("SIGKILL");
    rmSync(peer.dir, { recursive: true, force: true });
  }
  running.clear();
}

process.once("exit", killPeers);

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

async function listening(port: number, what: () => string): Promise<void> {
  let up = false;
  const poll = async () => {
    while (!up) {
      up = await canConnect(port);
      if (!up) await new Promise((r) => setTimeout(r, 50));
    }
  };
  const polling = poll();
  try {
    await eventually(() => up, what, 15_000);
  } finally {
    up = true;
    await polling;
  }
}

export interface RealPeer {
  child: ChildProcess;
  dir: string;
  /** What the peer logged (its error log). */
  log(): string;
  stop(): void;
}

function start(program: string, args: string[], dir: string, logFile: string): RealPeer {
  const child = spawn(program, args, { stdio: ["ignore", "ignore", "pipe"], cwd: dir });
  let stderr = "";
  child.stderr?.on("data", (d) => (stderr += d));
  const entry = { child, dir };
  running.add(entry);
  return {
    child,
    dir,
    log: () => {
      let text = stderr;
      try {
        text += readFileSync(logFile, "utf8");
      } catch {}
      return text;
    },
    stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      running.delete(entry);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface NginxOptions {
  /** The mcudpt WebSocket listener behind nginx (ws://127.0.0.1:PORT/tunnel). */
  backendPort: number;
  /** Plain HTTP port of nginx. */
  httpPort: number;
  /** TLS port of nginx (wss:// terminated here), with this certificate and key (PEM). */
  tls?: { port: number; cert: string; key: string };
}

/**
 * nginx as the usual WebSocket reverse proxy (the README's snippet): proxy_pass with HTTP/1.1 and
 * the Upgrade/Connection headers, for /tunnel; optionally terminating TLS. A reload (SIGHUP) lets old
 * workers finish within a second (worker_shutdown_timeout), so tunnels through them are cut.
 */
export async function startNginx(program: string, options: NginxOptions): Promise<RealPeer & { reload(): void }> {
  const dir = mkdtempSync(join(tmpdir(), "mcudpt-nginx-"));
  // Workers run as another user (nobody) when the master is root: let them reach their temp folders.
  chmodSync(dir, 0o755);
  mkdirSync(join(dir, "tmp"));
  const tls = options.tls;
  if (tls) {
    writeFileSync(join(dir, "cert.pem"), tls.cert);
    writeFileSync(join(dir, "key.pem"), tls.key, { mode: 0o600 });
  }
  const conf = `
daemon off;
master_process on;
worker_processes 1;
worker_shutdown_timeout 1s;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      close;
  }
  server {
    listen 127.0.0.1:${options.httpPort};
    ${tls ? `listen 127.0.0.1:${tls.port} ssl;\n    ssl_certificate ${dir}/cert.pem;\n    ssl_certificate_key ${dir}/key.pem;` : ""}
    location /tunnel {
      proxy_pass http://127.0.0.1:${options.backendPort};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
  }
}
`;
  writeFileSync(join(dir, "nginx.conf"), conf);
  const peer = start(
    program,
    ["-p", dir, "-c", join(dir, "nginx.conf"), "-e", join(dir, "error.log")],
    dir,
    join(dir, "error.log"),
  );
  await listening(options.httpPort, () => `nginx listening on ${options.httpPort}:\n${peer.log()}`);
  if (tls) await listening(tls.port, () => `nginx listening on ${tls.port}:\n${peer.log()}`);
  return { ...peer, reload: () => peer.child.kill("SIGHUP") };
}

export interface TinyproxyOptions {
  port: number;
  /** Basic credentials the proxy wants. */
  basicAuth?: { user: string; password: string };
  /** Only CONNECT to these ports is allowed (others: 403). Default: any port. */
  connectPorts?: number[];
}

/** tinyproxy as an HTTP CONNECT proxy on 127.0.0.1, in the foreground. */
export async function startTinyproxy(program: string, options: TinyproxyOptions): Promise<RealPeer> {
  const dir = mkdtempSync(join(tmpdir(), "mcudpt-tinyproxy-"));
  chmodSync(dir, 0o755);
  const lines = [
    `Port ${options.port}`,
    "Listen 127.0.0.1",
    "Timeout 600",
    "MaxClients 100",
    "LogLevel Info",
    `LogFile "${dir}/tinyproxy.log"`,
    `PidFile "${dir}/tinyproxy.pid"`,
    "Allow 127.0.0.1",
    ...(options.basicAuth ? [`BasicAuth ${options.basicAuth.user} ${options.basicAuth.password}`] : []),
    ...(options.connectPorts ?? []).map((port) => `ConnectPort ${port}`),
  ];
  writeFileSync(join(dir, "tinyproxy.conf"), `${lines.join("\n")}\n`);
  const peer = start(program, ["-d", "-c", join(dir, "tinyproxy.conf")], dir, join(dir, "tinyproxy.log"));
  await listening(options.port, () => `tinyproxy listening on ${options.port}:\n${peer.log()}`);
  return peer;
}
