// The fetch wrapper every view uses: bearer token, one refresh on 401, problem+json errors as ApiError.

export interface TokenPair {
  access_token: string;
  refresh_token: string;
  token_type?: string;
  expires_in?: number;
}

/** A failed call, carrying the station's problem+json fields; `message` is what the user should read. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly title: string;
  readonly detail: string;
  readonly errors: unknown[];

  constructor(status: number, problem: Record<string, unknown>) {
    const title = typeof problem.title === "string" ? problem.title : "";
    const detail = typeof problem.detail === "string" ? problem.detail : "";
    super(detail || title || `Request failed (HTTP ${status})`);
    this.name = "ApiError";
    this.status = status;
    this.code = typeof problem.code === "string" ? problem.code : "";
    this.title = title;
    this.detail = detail;
    this.errors = Array.isArray(problem.errors) ? problem.errors : [];
  }
}

/** Turn any thrown value into a sentence for the screen (never a stack). */
export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof TypeError) return "The station cannot be reached. Check the connection and try again.";
  if (err instanceof Error && err.message) return err.message;
  return "Something went wrong.";
}

export interface TokenStore {
  get(): TokenPair | null;
  set(pair: TokenPair | null): void;
}

const STORAGE_KEY = "waystation.session";

export function localTokenStore(storage: Storage | undefined = globalThis.localStorage): TokenStore {
  let memory: TokenPair | null = null;
  return {
    get() {
      if (!storage) return memory;
      try {
        const raw = storage.getItem(STORAGE_KEY);
        return raw ? (JSON.parse(raw) as TokenPair) : null;
      } catch {
        return null;
      }
    },
    set(pair) {
      memory = pair;
      if (!storage) return;
      if (pair) storage.setItem(STORAGE_KEY, JSON.stringify(pair));
      else storage.removeItem(STORAGE_KEY);
    },
  };
}

export type Query = Record<string, string | number | boolean | null | undefined>;

export interface RequestOptions {
  query?: Query;
  body?: unknown;
  /** Skip the bearer token and the refresh (login, setup, refresh itself). */
  anonymous?: boolean;
  signal?: AbortSignal;
  /** Return the raw Response (downloads, streams) instead of parsed JSON. */
  raw?: boolean;
}

type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export function withQuery(path: string, query?: Query): string {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
  }
  const qs = params.toString();
  return qs ? `${path}${path.includes("?") ? "&" : "?"}${qs}` : path;
}

async function problemOf(res: Response): Promise<ApiError> {
  let body: Record<string, unknown> = {};
  try {
    const text = await res.text();
    if (text) {
      const parsed: unknown = JSON.parse(text);
      if (parsed && typeof parsed === "object") body = parsed as Record<string, unknown>;
    }
  } catch {
    // Not JSON (a proxy's HTML page, say): fall back to the status line.
    body = { title: res.statusText };
  }
  return new ApiError(res.status, body);
}

export class ApiClient {
  readonly base: string;
  private readonly fetchImpl: FetchLike;
  readonly tokens: TokenStore;
  private refreshing: Promise<boolean> | null = null;
  /** Called when the session ended (refresh refused): the app goes to the login page. */
  onSessionEnded: () => void = () => {};

  constructor(options: { base?: string; fetch?: FetchLike; tokens?: TokenStore } = {}) {
    this.base = options.base ?? "";
    this.fetchImpl = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.tokens = options.tokens ?? localTokenStore();
  }

  get accessToken(): string | null {
    return this.tokens.get()?.access_token ?? null;
  }

  /** Swap the refresh token for a new pair; concurrent callers share one refresh. */
  refresh(): Promise<boolean> {
    if (!this.refreshing) {
      this.refreshing = this.doRefresh().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  private async doRefresh(): Promise<boolean> {
    const current = this.tokens.get();
    if (!current?.refresh_token) return false;
    let res: Response;
    try {
      res = await this.fetchImpl(this.base + "/api/v1/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ refresh_token: current.refresh_token }),
      });
    } catch {
      return false; // offline: keep the tokens, the next call tries again
    }
    if (!res.ok) {
      if (res.status === 401 || res.status === 400 || res.status === 422) {
        this.tokens.set(null);
        this.onSessionEnded();
      }
      return false;
    }
    this.tokens.set((await res.json()) as TokenPair);
    return true;
  }

  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const res = await this.send(method, path, options, !options.anonymous);
    if (!res.ok) throw await problemOf(res);
    if (options.raw) return res as unknown as T;
    if (res.status === 204) return undefined as T;
    const type = res.headers.get("content-type") ?? "";
    if (!type.includes("json")) return (await res.text()) as unknown as T;
    return (await res.json()) as T;
  }

  private async send(method: string, path: string, options: RequestOptions, retry: boolean): Promise<Response> {
    const headers: Record<string, string> = { Accept: "application/json" };
    let body: BodyInit | undefined;
    if (options.body instanceof FormData || options.body instanceof Blob) {
      body = options.body;
    } else if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    const token = options.anonymous ? null : this.accessToken;
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await this.fetchImpl(this.base + withQuery(path, options.query), {
      method,
      headers,
      body,
      signal: options.signal,
    });
    if (res.status === 401 && retry && token && (await this.refresh())) {
      return this.send(method, path, options, false);
    }
    if (res.status === 401 && !options.anonymous && token) {
      this.tokens.set(null);
      this.onSessionEnded();
    }
    return res;
  }

  get<T>(path: string, query?: Query, signal?: AbortSignal): Promise<T> {
    return this.request<T>("GET", path, { query, signal });
  }
  post<T>(path: string, body?: unknown, options: RequestOptions = {}): Promise<T> {
    return this.request<T>("POST", path, { ...options, body });
  }
  patch<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>("PATCH", path, { body });
  }
  put<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>("PUT", path, { body });
  }
  delete<T>(path: string): Promise<T> {
    return this.request<T>("DELETE", path);
  }
}

/** The app's one client (tests build their own). */
export const api = new ApiClient();
