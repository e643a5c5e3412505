import { describe, expect, it, vi } from "vitest";
import { SseParser } from "../lib/sse";
import { LiveStream, typeMatches, type LiveEvent } from "./live";

/** A streaming Response whose body we feed by hand, like a real SSE connection. */
function streamingResponse(): { response: Response; send: (text: string) => void; end: () => void } {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({ start: (c) => (controller = c) });
  const encoder = new TextEncoder();
  return {
    response: new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } }),
    send: (text) => controller.enqueue(encoder.encode(text)),
    end: () => controller.close(),
  };
}

async function until(check: () => boolean, ms = 2000): Promise<void> {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > ms) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 2));
  }
}

describe("SseParser", () => {
  it("parses events split anywhere, with CRLF line ends and comments", () => {
    const parser = new SseParser();
    const text = ": ping\r\n\r\nid: 7\r\nevent: device.online\r\ndata: {\"device_id\":\"d1\"}\r\n\r\n";
    const out = [];
    for (const ch of text) out.push(...parser.push(ch));
    expect(out).toEqual([{ id: "7", event: "device.online", data: '{"device_id":"d1"}' }]);
  });

  it("joins multi-line data", () => {
    const parser = new SseParser();
    expect(parser.push("data: a\ndata: b\n\n")).toEqual([{ id: null, event: "message", data: "a\nb" }]);
  });
});

describe("typeMatches", () => {
  it("understands wildcards", () => {
    expect(typeMatches("device.*", "device.online")).toBe(true);
    expect(typeMatches("device.*", "devices.x")).toBe(false);
    expect(typeMatches("*", "rule.fired")).toBe(true);
    expect(typeMatches("rule.fired", "rule.fired")).toBe(true);
  });
});

describe("LiveStream", () => {
  it("dispatches events, then reconnects with Last-Event-ID and backoff", async () => {
    const conns: Array<ReturnType<typeof streamingResponse>> = [];
    const requests: Array<Record<string, string>> = [];
    const sleeps: number[] = [];
    const fetch = vi.fn(async (_url: string, init?: RequestInit) => {
      requests.push({ ...(init?.headers as Record<string, string>) });
      if (requests.length === 2) throw new TypeError("network down"); // one failed attempt in between
      const conn = streamingResponse();
      conns.push(conn);
      return conn.response;
    });
    const live = new LiveStream({
      fetch,
      token: () => "T",
      refresh: async () => true,
      sleep: async (ms) => {
        sleeps.push(ms);
      },
      minDelayMs: 10,
      maxDelayMs: 40,
    });
    const seen: LiveEvent[] = [];
    live.on("device.*", (ev) => seen.push(ev));
    live.start();
    await until(() => live.state.value === "live");
    conns[0]!.send('id: 41\nevent: device.online\ndata: {"device_id":"d1"}\n\n');
    conns[0]!.send('id: 42\nevent: rule.fired\ndata: {"rule_id":1}\n\n');
    await until(() => seen.length === 1);
    expect(seen[0]).toEqual({ id: "41", type: "device.online", data: { device_id: "d1" } });
    expect(live.lastEventId).toBe("42");

    conns[0]!.end(); // the station went away
    await until(() => requests.length === 3 && live.state.value === "live");
    expect(requests[0]!.Authorization).toBe("Bearer T");
    expect(requests[0]!["Last-Event-ID"]).toBeUndefined();
    expect(requests[1]!["Last-Event-ID"]).toBe("42");
    expect(requests[2]!["Last-Event-ID"]).toBe("42");
    expect(sleeps).toEqual([10, 20]); // doubled after the failed attempt
    live.stop();
    expect(live.state.value).toBe("offline");
  });

  it("refreshes the token on 401 and stops when that fails too", async () => {
    let token = "old";
    const fetch = vi.fn(async (_url: string, init?: RequestInit) => {
      const auth = (init?.headers as Record<string, string>).Authorization;
      if (auth === "Bearer new") return streamingResponse().response;
      return new Response("{}", { status: 401 });
    });
    const refresh = vi.fn(async () => {
      token = "new";
      return true;
    });
    const live = new LiveStream({ fetch, token: () => token, refresh, sleep: async () => {}, minDelayMs: 1 });
    live.start();
    await until(() => live.state.value === "live");
    expect(refresh).toHaveBeenCalledTimes(1);
    live.stop();

    const denied = new LiveStream({
      fetch: async () => new Response("{}", { status: 401 }),
      token: () => "x",
      refresh: async () => false,
      sleep: async () => {},
    });
    denied.start();
    await new Promise((r) => setTimeout(r, 20));
    expect(denied.state.value).toBe("offline");
  });

  it("announces each (re)connection as stream.open so views can resync", async () => {
    const live = new LiveStream({ fetch: async () => streamingResponse().response, token: () => "T", refresh: async () => true });
    const opened = vi.fn();
    live.on("stream.open", opened);
    live.start();
    await until(() => opened.mock.calls.length === 1);
    live.stop();
  });
});
