// The shapes of the station's answers that the UI reads (PROTOCOLS §12; only the fields used here).

export type Role = "owner" | "admin" | "member" | "viewer";
export type DeviceStatus = "online" | "offline" | "unknown";

export interface User {
  id: number;
  username: string;
  role: Role;
  disabled: boolean;
  created_at: string;
}

export interface Station {
  id: string;
  name: string;
  is_default?: boolean;
}

/** A station the user can see, with the role the station gives them there (`GET /api/v1/auth/me`). */
export interface StationRole extends Station {
  role: Role;
}

/** `GET /api/v1/auth/me`: `role` is installation-wide, `stations` the role at each visible station. */
export interface Me extends User {
  stations?: StationRole[];
}

export interface Device {
  id: string;
  station_id: string;
  type: string;
  name: string | null;
  zone: string | null;
  status: DeviceStatus;
  last_seen: string | null;
  firmware_version: string | null;
  state: Record<string, unknown>;
  enabled: boolean;
  created_at: string;
}

export interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  enum?: unknown[];
  description?: string;
}

export interface DeviceType {
  id: string;
  name: string;
  capabilities: string[];
  commands: Record<string, JsonSchema>;
}

export interface Command {
  request_id: string;
  device_id: string;
  action: string;
  params: Record<string, unknown>;
  status: string;
  error: string | null;
  created_at: string;
  sent_at?: string | null;
  acked_at?: string | null;
}

export interface LatestValue {
  channel: string;
  key: string;
  unit: string | null;
  value: number | null;
  ts: string | null;
}

export interface DeviceEvent {
  id?: number;
  kind: string;
  data: unknown;
  ts: string;
}

export interface Workspace {
  device: Device;
  latest: LatestValue[];
  recent_events: DeviceEvent[];
  pending_commands: Command[];
  ota: Record<string, unknown> | null;
}

export interface LinkStates {
  broker?: { connected: boolean; last_error: string | null; sync_mode?: string; sync_reachable?: boolean };
  cloud?: { state: string; claimed?: boolean; last_error: string | null; queue_depth?: number };
  ble?: { state: string };
}

export interface Alert {
  id: number;
  rule_id?: number;
  message?: string;
  severity?: string;
  status?: string;
  created_at?: string;
  [key: string]: unknown;
}

export interface HomeStatus {
  generated_at: string;
  devices: { total: number; online: number; offline: number; unknown: number; disabled: number };
  alerts: { active: number; items: Alert[] };
  recent_events: Array<Record<string, unknown>>;
  links: LinkStates;
}

export interface Bucket {
  ts: string;
  min: number | null;
  max: number | null;
  avg: number | null;
  count: number;
}

export interface FlowStats {
  accepted: number;
  rejected: number;
  last_error: string | null;
}

export interface Flow {
  id: number;
  code: string;
  topic: string;
  payload_schema: Record<string, unknown>;
  action: "STORE_DB" | "POST_ENDPOINT";
  endpoint_url: string | null;
  enabled: boolean;
  last_msg_id: number;
  stats: FlowStats;
  created_at: string;
}

export interface FlowRecord {
  msg_id: number;
  field: string;
  value: unknown;
  received_at: string;
}

export interface RuleAction {
  type: "webhook" | "log" | "command" | "alert";
  [key: string]: unknown;
}

export interface Rule {
  id: number;
  station_id: string;
  name: string;
  description: string;
  enabled: boolean;
  channel: string | null;
  event: string | null;
  device_id: string | null;
  operator: string | null;
  threshold: number | null;
  threshold_high: number | null;
  for_seconds: number;
  cooldown_seconds: number;
  actions: RuleAction[];
  last_fired_at: string | null;
}

export interface Firing {
  id: number;
  rule_id: number;
  ts: string;
  value: number | null;
  channel: string | null;
  device_id: string | null;
  status: string;
  outcomes: unknown[];
}

export interface Webhook {
  id: number;
  url: string;
  event_types: string[];
  description: string;
  enabled: boolean;
  secret?: string;
}

export interface Delivery {
  id: number;
  event_type: string | null;
  status: string;
  attempts: number;
  max_attempts: number;
  last_status_code: number | null;
  last_error: string | null;
  created_at: string;
  delivered_at: string | null;
}

export interface ApiToken {
  id: number;
  name: string;
  prefix: string;
  scopes: string[];
  station_id: string | null;
  created_at: string;
  last_used_at: string | null;
  revoked: boolean;
  token?: string;
}

export interface Member {
  station_id: string;
  user_id: number;
  username: string;
  role: Role;
}

export interface AuditEntry {
  ts: string;
  actor: string;
  action: string;
  target: string;
  summary: string;
  ip: string | null;
}

export interface Page<T> {
  items: T[];
  next_cursor?: string | null;
}

export type WidgetKind = "line_chart" | "gauge" | "stat" | "device_control" | "event_list";

export interface Position {
  x: number;
  y: number;
  w: number;
  h: number;
}

export interface Widget {
  id: number;
  dashboard_id: number;
  kind: WidgetKind;
  title: string;
  position: Position;
  config: Record<string, unknown>;
}

export interface DashboardLayout {
  columns: number;
  row_height: number;
}

export interface Dashboard {
  id: number;
  station_id: string;
  name: string;
  shared: boolean;
  owner_id: number | null;
  layout: DashboardLayout;
  created_at: string;
  updated_at: string;
  widgets?: Widget[];
}

export interface LogEntry {
  id: number;
  ts: string;
  level: string;
  source: string;
  message: string;
  related: Record<string, unknown>;
  station_id: string | null;
}
