// The live event stream (SSE `/api/v1/events/stream`) shared by every view, with reconnect and replay.
//
// EventSource cannot send an Authorization header, so the stream is read with fetch: the token goes in
// the header, `Last-Event-ID` asks the station to replay what was missed while we were away.

import { ref, type Ref } from "vue";
import { SseParser } from "../lib/sse";

export type LiveState = "connecting" | "live" | "offline";

export interface LiveEvent {
  id: string | null;
  type: string;
  data: Record<string, unknown>;
}

export type LiveHandler = (event: LiveEvent) => void;

type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface LiveDeps {
  fetch: FetchLike;
  token: () => string | null;
  refresh: () => Promise<boolean>;
  sleep?: (ms: number) => Promise<void>;
  url?: string;
  minDelayMs?: number;
  maxDelayMs?: number;
  /** No byte (not even the 15 s keep-alive) for this long: the connection is dead, reconnect. */
  idleTimeoutMs?: number;
}

/** `device.*` matches `device.online`; `*` matches everything; anything else must be equal. */
export function typeMatches(pattern: string, type: string): boolean {
  if (pattern === "*") return true;
  if (pattern.endsWith(".*")) return type.startsWith(pattern.slice(0, -1));
  return pattern === type;
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class LiveStream {
  readonly state: Ref<LiveState> = ref("offline");
  /** Seconds until the next attempt while offline (for the indicator's tooltip). */
  readonly retryInMs: Ref<number> = ref(0);
  lastEventId: string | null = null;
  private readonly handlers = new Set<{ pattern: string; fn: LiveHandler }>();
  private running = false;
  private generation = 0;
  private abort: AbortController | null = null;
  private readonly deps: Required<LiveDeps>;

  constructor(deps: LiveDeps) {
    this.deps = {
      sleep: defaultSleep,
      url: "/api/v1/events/stream",
      minDelayMs: 1000,
      maxDelayMs: 30000,
      idleTimeoutMs: 45000,
      ...deps,
    };
  }

  /** Call `fn` for every event whose type matches `pattern`; returns the unsubscribe function. */
  on(pattern: string, fn: LiveHandler): () => void {
    const entry = { pattern, fn };
    this.handlers.add(entry);
    return () => this.handlers.delete(entry);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    const generation = ++this.generation;
    void this.run(generation);
  }

  stop(): void {
    this.running = false;
    this.generation++;
    this.abort?.abort();
    this.abort = null;
    this.state.value = "offline";
    this.lastEventId = null;
  }

  /** Drop the current connection and connect again at once (after a new login, say). */
  restart(): void {
    this.stop();
    this.start();
  }

  private dispatch(event: LiveEvent): void {
    for (const { pattern, fn } of [...this.handlers]) {
      if (!typeMatches(pattern, event.type)) continue;
      try {
        fn(event);
      } catch (err) {
        console.error("live handler failed", err);
      }
    }
  }

  private async run(generation: number): Promise<void> {
    const { minDelayMs, maxDelayMs } = this.deps;
    let delay = minDelayMs;
    let refreshed = false;
    while (this.running && generation === this.generation) {
      this.state.value = "connecting";
      const outcome = await this.connectOnce(generation);
      if (!this.running || generation !== this.generation) return;
      if (outcome === "unauthorized") {
        // One refresh per failure streak; a second 401 right after means the session is over.
        if (!refreshed && (await this.deps.refresh())) {
          refreshed = true;
          continue;
        }
        this.running = false;
        this.state.value = "offline";
        return;
      }
      if (outcome === "opened") {
        delay = minDelayMs;
        refreshed = false;
      }
      this.state.value = "offline";
      this.retryInMs.value = delay;
      await this.deps.sleep(delay);
      delay = Math.min(delay * 2, maxDelayMs);
    }
  }

  private async connectOnce(generation: number): Promise<"opened" | "failed" | "unauthorized"> {
    const token = this.deps.token();
    if (!token) return "unauthorized";
    const controller = new AbortController();
    this.abort = controller;
    const headers: Record<string, string> = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
    if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
    let idle: ReturnType<typeof setTimeout> | undefined;
    const armIdle = () => {
      clearTimeout(idle);
      idle = setTimeout(() => controller.abort(), this.deps.idleTimeoutMs);
    };
    let opened = false;
    try {
      armIdle();
      const res = await this.deps.fetch(this.deps.url, { headers, signal: controller.signal, cache: "no-store" });
      if (res.status === 401) return "unauthorized";
      if (!res.ok || !res.body) return "failed";
      opened = true;
      this.state.value = "live";
      this.dispatch({ id: null, type: "stream.open", data: {} });
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const parser = new SseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || generation !== this.generation) break;
        armIdle();
        for (const msg of parser.push(decoder.decode(value, { stream: true }))) {
          if (msg.id !== null && msg.id !== "") this.lastEventId = msg.id;
          let data: Record<string, unknown> = {};
          try {
            const parsed: unknown = msg.data ? JSON.parse(msg.data) : {};
            if (parsed && typeof parsed === "object") data = parsed as Record<string, unknown>;
          } catch {
            continue;
          }
          this.dispatch({ id: msg.id, type: msg.event, data });
        }
      }
    } catch {
      // Network error or our own abort (idle or stop): the loop decides what comes next.
    } finally {
      clearTimeout(idle);
      if (this.abort === controller) this.abort = null;
    }
    return opened ? "opened" : "failed";
  }
}
