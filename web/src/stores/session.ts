// Who is logged in, their role at the station being viewed, and the one live stream of the session.
//
// Roles count per station (docs/security.md): a member of station A may be a viewer of station B, and
// installation-wide routes (users, flows, snapshots, the cloud link) follow the installation role.
// So `can()` asks about the station being viewed, `canAt()` about a resource's own station and
// `canInstallation()` about the installation.

import { reactive } from "vue";
import { api, type TokenPair } from "../api/client";
import type { Me, Role, Station, StationRole, User } from "../api/types";
import { pickStation, roleAt, roleAtLeast, type RoleScope } from "../lib/roles";
import { LiveStream } from "./live";

const STATION_KEY = "waystation.station";

export const session = reactive({
  user: null as User | null,
  /** The station being viewed (the menu and the controls follow the user's role there). */
  station: null as Station | null,
  /** Every station the user can see, with their role at each. */
  stations: [] as StationRole[],
  /** True once we know whether a stored session is still valid. */
  checked: false,
});

export const live = new LiveStream({
  fetch: (input, init) => globalThis.fetch(input, init),
  token: () => api.accessToken,
  refresh: () => api.refresh(),
});

api.onSessionEnded = () => {
  session.user = null;
  live.stop();
};

/** The user's role at the station being viewed. */
export function stationRole(): Role | null {
  return roleAt(session.stations, session.station?.id);
}

/** May the current user do what needs `role` at the station being viewed? (Viewers see no controls.) */
export function can(role: Role): boolean {
  return roleAtLeast(stationRole(), role);
}

/** May the user do what needs `role` at this station (a device's, a dashboard's, a rule's)? */
export function canAt(stationId: string | null | undefined, role: Role): boolean {
  return roleAtLeast(roleAt(session.stations, stationId), role);
}

/** Installation-wide routes (users, flows, snapshots, claiming the cloud link) need this role. */
export function canInstallation(role: Role): boolean {
  return roleAtLeast(session.user?.role, role);
}

export function canIn(scope: RoleScope, role: Role): boolean {
  return scope === "installation" ? canInstallation(role) : can(role);
}

function storedStation(): string | null {
  try {
    return globalThis.localStorage?.getItem(STATION_KEY) ?? null;
  } catch {
    return null;
  }
}

/** Switch the station being viewed (remembered per browser). */
export function selectStation(id: string): void {
  const next = session.stations.find((s) => s.id === id);
  if (!next) return;
  session.station = next;
  try {
    globalThis.localStorage?.setItem(STATION_KEY, id);
  } catch {
    // Private mode: the choice lasts for this tab only.
  }
}

/** Apply an answer of `GET /api/v1/auth/me` (with `GET /api/v1/station` as the fallback default). */
export function applyMe(me: Me, fallback: Station | null): void {
  const { stations, ...user } = me;
  session.user = user;
  // An older station without `stations`: the highest role at its default station, as before.
  session.stations = stations ?? (fallback ? [{ ...fallback, role: me.role }] : []);
  session.station = pickStation(session.stations, storedStation() ?? session.station?.id ?? null);
}

async function begin(pair: TokenPair): Promise<void> {
  api.tokens.set(pair);
  await loadSession();
}

/** Read who we are; without a valid session this leaves `session.user` empty. */
export async function loadSession(): Promise<void> {
  try {
    if (!api.accessToken) {
      session.user = null;
      return;
    }
    const me = await api.get<Me>("/api/v1/auth/me");
    const fallback = me.stations ? null : await api.get<Station>("/api/v1/station").catch(() => null);
    applyMe(me, fallback);
    live.restart();
  } catch {
    session.user = null;
  } finally {
    session.checked = true;
  }
}

/** Roles change while a tab is open (a member promoted, removed from a station): read them again. */
export async function refreshRoles(): Promise<void> {
  if (!session.user) return;
  try {
    applyMe(await api.get<Me>("/api/v1/auth/me"), session.station);
  } catch {
    // Offline or logged out: the client already handles an ended session.
  }
}

export async function login(username: string, password: string): Promise<void> {
  const pair = await api.post<TokenPair>("/api/v1/auth/login", { username, password }, { anonymous: true });
  await begin(pair);
}

export async function completeSetup(token: string, username: string, password: string): Promise<void> {
  const pair = await api.post<TokenPair>(
    "/api/v1/auth/setup",
    { token, username, password },
    { anonymous: true },
  );
  await begin(pair);
}

export async function logout(): Promise<void> {
  const refresh = api.tokens.get()?.refresh_token;
  try {
    await api.post("/api/v1/auth/logout", refresh ? { refresh_token: refresh } : {});
  } catch {
    // Already logged out on the station, or offline: forget the tokens anyway.
  }
  api.tokens.set(null);
  session.user = null;
  session.stations = [];
  live.stop();
}
