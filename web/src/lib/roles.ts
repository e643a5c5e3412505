// Roles, ordered by what they may do (owner > admin > member > viewer), as the station ranks them.

import type { Role, StationRole } from "../api/types";

export const ROLE_RANK: Record<Role, number> = { viewer: 0, member: 1, admin: 2, owner: 3 };
export const ROLES: Role[] = ["owner", "admin", "member", "viewer"];

export function roleAtLeast(role: Role | null | undefined, needed: Role): boolean {
  if (!role) return false;
  return (ROLE_RANK[role] ?? -1) >= ROLE_RANK[needed];
}

/** The user's role at one station; null when the station is not theirs to see. */
export function roleAt(stations: StationRole[], stationId: string | null | undefined): Role | null {
  if (!stationId) return null;
  return stations.find((s) => s.id === stationId)?.role ?? null;
}

/**
 * The station the UI shows: the one chosen before (if still visible), else the default station, else
 * the first one. Null when the user sees no station at all.
 */
export function pickStation(stations: StationRole[], preferred: string | null): StationRole | null {
  return (
    stations.find((s) => s.id === preferred) ?? stations.find((s) => s.is_default) ?? stations[0] ?? null
  );
}

/** Whose role a part of the UI follows: the station being viewed, or the installation-wide role. */
export type RoleScope = "station" | "installation";
