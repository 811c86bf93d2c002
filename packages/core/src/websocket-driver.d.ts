/** The part of websocket-driver (faye's sans-I/O WebSocket protocol handler) that websocket.ts uses. */
declare module "websocket-driver" {
  import type { EventEmitter } from "node:events";

  interface Driver extends EventEmitter {
    readonly io: EventEmitter & { readable: boolean; writable: boolean };
    readonly messages: EventEmitter & { readable: boolean; writable: boolean };
    readonly readyState: number;
    /** Server: the request's. */
    readonly method?: string;
    readonly url?: string;
    readonly headers?: Record<string, string>;
    /** Client: the response's status, once it came. */
    readonly statusCode?: number;
    setHeader(name: string, value: string): boolean;
    start(): boolean;
    parse(chunk: Buffer): void;
    binary(message: Buffer): boolean;
    close(reason?: string, code?: number): boolean;
  }

  interface DriverOptions {
    maxLength?: number;
    protocols?: string | string[];
    masking?: boolean;
    requireMasking?: boolean;
  }

  const websocket: {
    client(url: string, options?: DriverOptions): Driver;
    server(options?: DriverOptions): Driver;
    isWebSocket(request: { method?: string; headers?: Record<string, string> }): boolean;
  };
  export default websocket;
}
