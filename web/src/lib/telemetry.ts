// The live telemetry WebSocket (`/api/v1/ws/telemetry`): newest values of some channels, reconnecting.
//
// Browsers cannot set headers on a WebSocket, so the token goes in `?access_token=`; the station checks
// it only when the socket opens, and closes with 4401 when it is not valid (then we refresh and retry).

export interface TelemetryItem {
  channel: string;
  ts: string;
  value: number | string | boolean | null;
}

export interface TelemetryDeps {
  token: () => string | null;
  refresh: () => Promise<boolean>;
  socket?: (url: string) => WebSocket;
  location?: { protocol: string; host: string };
  minDelayMs?: number;
  maxDelayMs?: number;
}

/** Is a reading at `ts` newer than what is shown (`shownTs`)? A fetched "latest" can be older than a
 * value the socket already brought, and must not put it back. */
export function isNewer(ts: string, shownTs: string | null | undefined): boolean {
  return !shownTs || Date.parse(ts) >= Date.parse(shownTs);
}

export function telemetryUrl(location: { protocol: string; host: string }, channels: string[], token: string): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams({ channels: channels.join(","), access_token: token });
  return `${scheme}//${location.host}/api/v1/ws/telemetry?${params.toString()}`;
}

export class TelemetrySocket {
  private ws: WebSocket | null = null;
  private stopped = false;
  private delay: number;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly channels: string[],
    private readonly onItems: (items: TelemetryItem[]) => void,
    private readonly deps: TelemetryDeps,
  ) {
    this.delay = deps.minDelayMs ?? 1000;
  }

  start(): void {
    this.stopped = false;
    this.open();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.ws?.close();
    this.ws = null;
  }

  private open(): void {
    const token = this.deps.token();
    if (this.stopped || !token || this.channels.length === 0) return;
    const location = this.deps.location ?? globalThis.location;
    const make = this.deps.socket ?? ((url: string) => new WebSocket(url));
    const ws = make(telemetryUrl(location, this.channels, token));
    this.ws = ws;
    ws.onopen = () => {
      this.delay = this.deps.minDelayMs ?? 1000;
    };
    ws.onmessage = (msg: MessageEvent) => {
      try {
        const data = JSON.parse(String(msg.data)) as { type?: string; items?: TelemetryItem[] };
        if (data.type === "datapoints" && Array.isArray(data.items)) this.onItems(data.items);
      } catch {
        // Not ours to worry about: the station only sends JSON.
      }
    };
    ws.onclose = (ev: CloseEvent) => {
      if (this.stopped || this.ws !== ws) return;
      this.ws = null;
      const retry = () => {
        this.timer = setTimeout(() => this.open(), this.delay);
        this.delay = Math.min(this.delay * 2, this.deps.maxDelayMs ?? 30000);
      };
      if (ev.code === 4401) {
        void this.deps.refresh().then((ok) => (ok ? retry() : undefined));
      } else {
        retry();
      }
    };
  }
}
