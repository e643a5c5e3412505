// The sections of the app, who sees each one in the menu (the station enforces it anyway).
// `scope: "installation"` follows the installation-wide role (the station's own routes need it there);
// everything else follows the user's role at the station being viewed.

import type { Role } from "./api/types";
import type { RoleScope } from "./lib/roles";

export interface NavItem {
  to: string;
  label: string;
  role: Role;
  scope?: RoleScope;
}

export const NAV: NavItem[] = [
  { to: "/", label: "Home", role: "viewer" },
  { to: "/devices", label: "Devices", role: "viewer" },
  { to: "/telemetry", label: "Telemetry", role: "viewer" },
  { to: "/dashboards", label: "Dashboards", role: "viewer" },
  { to: "/provisioning", label: "Provisioning", role: "admin" },
  { to: "/firmware", label: "Firmware", role: "admin" },
  { to: "/flows", label: "Flows", role: "admin", scope: "installation" },
  { to: "/rules", label: "Rules", role: "viewer" },
  { to: "/webhooks", label: "Webhooks", role: "admin" },
  { to: "/confirmations", label: "MCP inbox", role: "viewer" },
  { to: "/snapshots", label: "Snapshots", role: "admin", scope: "installation" },
  { to: "/cloud", label: "Cloud link", role: "viewer" },
  { to: "/access", label: "Users & tokens", role: "admin" },
  { to: "/audit", label: "Audit log", role: "admin" },
  { to: "/system", label: "System", role: "viewer" },
];

/** The items a user sees, given a check of their role in a scope (the session's `canIn`). */
export function visibleNav(items: NavItem[], allowed: (scope: RoleScope, role: Role) => boolean): NavItem[] {
  return items.filter((item) => allowed(item.scope ?? "station", item.role));
}
