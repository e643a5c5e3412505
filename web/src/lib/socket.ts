// A reconnecting JSON WebSocket to the station (token in `?access_token=`, refreshed after a 4401 close).

import { ref, type Ref } from "vue";

export interface JsonSocketDeps {
  token: () => string | null;
  refresh: () => Promise<boolean>;
  location?: { protocol: string; host: string };
  socket?: (url: string) => WebSocket;
  minDelayMs?: number;
  maxDelayMs?: number;
}

export function socketUrl(location: { protocol: string; host: string }, path: string, token: string): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const sep = path.includes("?") ? "&" : "?";
  return `${scheme}//${location.host}${path}${sep}access_token=${encodeURIComponent(token)}`;
}

export class JsonSocket {
  readonly open: Ref<boolean> = ref(false);
  private ws: WebSocket | null = null;
  private stopped = true;
  private delay: number;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly path: string,
    private readonly onMessage: (data: Record<string, unknown>) => void,
    private readonly deps: JsonSocketDeps,
  ) {
    this.delay = deps.minDelayMs ?? 1000;
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.ws?.close();
    this.ws = null;
    this.open.value = false;
  }

  private connect(): void {
    const token = this.deps.token();
    if (this.stopped || !token) return;
    const make = this.deps.socket ?? ((url: string) => new WebSocket(url));
    const ws = make(socketUrl(this.deps.location ?? globalThis.location, this.path, token));
    this.ws = ws;
    ws.onopen = () => {
      this.open.value = true;
      this.delay = this.deps.minDelayMs ?? 1000;
    };
    ws.onmessage = (msg: MessageEvent) => {
      try {
        const data: unknown = JSON.parse(String(msg.data));
        if (data && typeof data === "object") this.onMessage(data as Record<string, unknown>);
      } catch {
        // The station sends JSON only.
      }
    };
    ws.onclose = (ev: CloseEvent) => {
      this.open.value = false;
      if (this.stopped || this.ws !== ws) return;
      this.ws = null;
      const retry = () => {
        this.timer = setTimeout(() => this.connect(), this.delay);
        this.delay = Math.min(this.delay * 2, this.deps.maxDelayMs ?? 30000);
      };
      if (ev.code === 4401) void this.deps.refresh().then((ok) => (ok ? retry() : undefined));
      else retry();
    };
  }
}
