import { describe, expect, it, vi } from "vitest";
import { ApiClient, ApiError, errorMessage, type TokenPair, type TokenStore } from "./client";

function memoryTokens(pair: TokenPair | null): TokenStore {
  let current = pair;
  return { get: () => current, set: (p) => (current = p) };
}

function json(status: number, body: unknown, type = "application/json"): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": type } });
}

describe("ApiClient", () => {
  it("sends the bearer token and parses JSON", async () => {
    const fetch = vi.fn(async () => json(200, { ok: true }));
    const client = new ApiClient({ fetch, tokens: memoryTokens({ access_token: "A1", refresh_token: "R1" }) });
    expect(await client.get("/api/v1/x", { a: 1, empty: "", none: null })).toEqual({ ok: true });
    const [url, init] = fetch.mock.calls[0] as unknown as [string, RequestInit];
    expect(url).toBe("/api/v1/x?a=1");
    expect((init.headers as Record<string, string>).Authorization).toBe("Bearer A1");
  });

  it("refreshes once on 401 and retries with the new token", async () => {
    const tokens = memoryTokens({ access_token: "old", refresh_token: "R1" });
    const seen: string[] = [];
    const fetch = vi.fn(async (url: string, init?: RequestInit) => {
      if (url === "/api/v1/auth/refresh") {
        expect(JSON.parse(String(init?.body))).toEqual({ refresh_token: "R1" });
        return json(200, { access_token: "new", refresh_token: "R2" });
      }
      const auth = (init?.headers as Record<string, string>).Authorization ?? "";
      seen.push(auth);
      return auth === "Bearer new" ? json(200, { items: [] }) : json(401, { title: "Unauthorized", code: "TOKEN_EXPIRED" });
    });
    const client = new ApiClient({ fetch, tokens });
    expect(await client.get("/api/v1/devices")).toEqual({ items: [] });
    expect(seen).toEqual(["Bearer old", "Bearer new"]);
    expect(tokens.get()).toEqual({ access_token: "new", refresh_token: "R2" });
  });

  it("shares one refresh between concurrent 401s", async () => {
    let refreshes = 0;
    const fetch = vi.fn(async (url: string, init?: RequestInit) => {
      if (url.endsWith("/auth/refresh")) {
        refreshes++;
        await new Promise((r) => setTimeout(r, 5));
        return json(200, { access_token: "new", refresh_token: "R2" });
      }
      const auth = (init?.headers as Record<string, string>).Authorization;
      return auth === "Bearer new" ? json(200, {}) : json(401, {});
    });
    const client = new ApiClient({ fetch, tokens: memoryTokens({ access_token: "old", refresh_token: "R1" }) });
    await Promise.all([client.get("/a"), client.get("/b"), client.get("/c")]);
    expect(refreshes).toBe(1);
  });

  it("ends the session when the refresh is refused", async () => {
    const tokens = memoryTokens({ access_token: "old", refresh_token: "R1" });
    const fetch = vi.fn(async (url: string) =>
      url.endsWith("/auth/refresh") ? json(401, { title: "Unauthorized", detail: "Refresh token revoked." }) : json(401, {}),
    );
    const client = new ApiClient({ fetch, tokens });
    const ended = vi.fn();
    client.onSessionEnded = ended;
    await expect(client.get("/api/v1/devices")).rejects.toBeInstanceOf(ApiError);
    expect(tokens.get()).toBeNull();
    expect(ended).toHaveBeenCalled();
  });

  it("maps problem+json to ApiError with the detail as message", async () => {
    const fetch = vi.fn(async () =>
      json(
        422,
        { type: "https://waystation.dev/errors/flow-invalid", title: "The flow definition is not valid", status: 422, detail: "topic: '#' must be a whole level and the last one", code: "FLOW_INVALID" },
        "application/problem+json",
      ),
    );
    const client = new ApiClient({ fetch, tokens: memoryTokens({ access_token: "A", refresh_token: "R" }) });
    const err = await client.post("/api/v1/flows", {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    const api = err as ApiError;
    expect(api.status).toBe(422);
    expect(api.code).toBe("FLOW_INVALID");
    expect(api.message).toBe("topic: '#' must be a whole level and the last one");
    expect(errorMessage(err)).toBe(api.message);
  });

  it("falls back to the title, then to the status, never to a body dump", async () => {
    expect(new ApiError(409, { title: "Conflict" }).message).toBe("Conflict");
    const fetch = vi.fn(async () => new Response("<html>Bad gateway</html>", { status: 502, statusText: "Bad Gateway" }));
    const client = new ApiClient({ fetch, tokens: memoryTokens(null) });
    const err = (await client.get("/x").catch((e: unknown) => e)) as ApiError;
    expect(err.message).toBe("Bad Gateway");
    expect(errorMessage(new TypeError("Failed to fetch"))).toMatch(/cannot be reached/);
  });

  it("sends no token for anonymous calls and returns nothing for 204", async () => {
    const fetch = vi.fn(async (_url: string, _init?: RequestInit) => new Response(null, { status: 204 }));
    const client = new ApiClient({ fetch, tokens: memoryTokens({ access_token: "A", refresh_token: "R" }) });
    expect(await client.post("/api/v1/auth/login", { u: 1 }, { anonymous: true })).toBeUndefined();
    const init = fetch.mock.calls[0]?.[1] as RequestInit;
    expect((init.headers as Record<string, string>).Authorization).toBeUndefined();
  });
});
