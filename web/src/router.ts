// Routes: every view is its own chunk, so the first load stays small.

import { createRouter, createWebHistory, type RouteRecordRaw } from "vue-router";
import type { Role } from "./api/types";
import type { RoleScope } from "./lib/roles";
import { canIn, loadSession, session } from "./stores/session";

declare module "vue-router" {
  interface RouteMeta {
    public?: boolean;
    role?: Role;
    /** Whose role `role` is checked against (default: the station being viewed). */
    scope?: RoleScope;
    title?: string;
  }
}

const routes: RouteRecordRaw[] = [
  { path: "/login", component: () => import("./views/LoginView.vue"), meta: { public: true, title: "Log in" } },
  { path: "/setup", component: () => import("./views/SetupView.vue"), meta: { public: true, title: "Setup" } },
  { path: "/", component: () => import("./views/HomeView.vue"), meta: { title: "Home" } },
  { path: "/devices", component: () => import("./views/DevicesView.vue"), meta: { title: "Devices" } },
  {
    path: "/devices/:id",
    component: () => import("./views/DeviceView.vue"),
    props: true,
    meta: { title: "Device" },
  },
  { path: "/telemetry", component: () => import("./views/TelemetryView.vue"), meta: { title: "Telemetry" } },
  { path: "/dashboards", component: () => import("./views/DashboardsView.vue"), meta: { title: "Dashboards" } },
  {
    path: "/dashboards/:id",
    component: () => import("./views/DashboardView.vue"),
    props: true,
    meta: { title: "Dashboard" },
  },
  {
    path: "/firmware",
    component: () => import("./views/FirmwareView.vue"),
    meta: { title: "Firmware", role: "admin" },
  },
  {
    path: "/provisioning",
    component: () => import("./views/ProvisioningView.vue"),
    meta: { title: "Provisioning", role: "admin" },
  },
  { path: "/flows", component: () => import("./views/FlowsView.vue"), meta: { title: "Flows", role: "admin", scope: "installation" } },
  { path: "/rules", component: () => import("./views/RulesView.vue"), meta: { title: "Rules" } },
  {
    path: "/webhooks",
    component: () => import("./views/WebhooksView.vue"),
    meta: { title: "Webhooks", role: "admin" },
  },
  { path: "/confirmations", component: () => import("./views/McpView.vue"), meta: { title: "MCP inbox" } },
  {
    path: "/snapshots",
    component: () => import("./views/SnapshotsView.vue"),
    meta: { title: "Snapshots", role: "admin", scope: "installation" },
  },
  { path: "/cloud", component: () => import("./views/CloudView.vue"), meta: { title: "Cloud link" } },
  {
    path: "/access",
    component: () => import("./views/AccessView.vue"),
    meta: { title: "Users & tokens", role: "admin" },
  },
  { path: "/audit", component: () => import("./views/AuditView.vue"), meta: { title: "Audit log", role: "admin" } },
  { path: "/system", component: () => import("./views/SystemView.vue"), meta: { title: "System" } },
  { path: "/:pathMatch(.*)*", component: () => import("./views/NotFoundView.vue"), meta: { title: "Not found" } },
];

export const router = createRouter({ history: createWebHistory(), routes });

router.beforeEach(async (to) => {
  if (!session.checked) await loadSession();
  if (to.meta.public) return true;
  if (!session.user) return { path: "/login", query: to.fullPath !== "/" ? { next: to.fullPath } : {} };
  if (to.meta.role && !canIn(to.meta.scope ?? "station", to.meta.role)) return { path: "/" };
  return true;
});

router.afterEach((to) => {
  document.title = to.meta.title ? `${to.meta.title} · Waystation` : "Waystation";
});
