// Dashboard logic without components: grid placement, moving and resizing widgets, who may edit a
// board, building a widget from the editor's form, and how a stat or gauge shows its value.

import type { Dashboard, Position, Role, Widget, WidgetKind } from "../api/types";
import { roleAtLeast } from "./roles";

export const RANGE_SECONDS: Record<string, number> = {
  "15m": 15 * 60,
  "1h": 3600,
  "6h": 6 * 3600,
  "24h": 86400,
  "7d": 7 * 86400,
  "30d": 30 * 86400,
};

export const KIND_LABELS: Record<WidgetKind, string> = {
  stat: "Stat (big number)",
  gauge: "Gauge",
  line_chart: "Line chart",
  device_control: "Device control",
  event_list: "Event list",
};

/** Default size of a new widget, in grid cells. */
export const DEFAULT_SIZE: Record<WidgetKind, { w: number; h: number }> = {
  stat: { w: 3, h: 2 },
  gauge: { w: 3, h: 3 },
  line_chart: { w: 6, h: 4 },
  device_control: { w: 4, h: 2 },
  event_list: { w: 6, h: 4 },
};

/**
 * May this user change the board? Personal boards only by their owner (whatever the role); shared
 * ones by members and up of the board's station (docs/dashboards.md#sharing).
 */
export function canEditBoard(board: Pick<Dashboard, "shared" | "owner_id">, userId: number | undefined, role: Role | null): boolean {
  if (!board.shared) return userId !== undefined && board.owner_id === userId;
  return roleAtLeast(role, "member");
}

/** Widgets in reading order (by row, then column), as the station lists them. */
export function readingOrder<T extends { position: Position; id: number }>(widgets: T[]): T[] {
  return [...widgets].sort((a, b) => a.position.y - b.position.y || a.position.x - b.position.x || a.id - b.id);
}

function overlaps(a: Position, b: Position): boolean {
  return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

/** The first free place (top to bottom, left to right) for a w×h widget on a grid `columns` wide. */
export function firstFreeSpot(taken: Position[], columns: number, w: number, h: number): Position {
  const width = Math.min(Math.max(1, w), columns);
  const bottom = taken.reduce((m, p) => Math.max(m, p.y + p.h), 0);
  for (let y = 0; y <= bottom; y++) {
    for (let x = 0; x + width <= columns; x++) {
      const spot = { x, y, w: width, h };
      if (!taken.some((p) => overlaps(p, spot))) return spot;
    }
  }
  return { x: 0, y: bottom, w: width, h };
}

export type Direction = "left" | "right" | "up" | "down";

/** One step of a widget in a direction, kept inside the grid (x + w ≤ columns, x, y ≥ 0). */
export function moveBy(p: Position, dir: Direction, columns: number): Position {
  const dx = dir === "left" ? -1 : dir === "right" ? 1 : 0;
  const dy = dir === "up" ? -1 : dir === "down" ? 1 : 0;
  return {
    ...p,
    x: Math.min(Math.max(0, p.x + dx), Math.max(0, columns - p.w)),
    y: Math.min(Math.max(0, p.y + dy), 10_000),
  };
}

/** Grow or shrink a widget by cells, within 1…columns wide (never past the right edge) and 1…100 high. */
export function resizeBy(p: Position, dw: number, dh: number, columns: number): Position {
  const w = Math.min(Math.max(1, p.w + dw), columns - p.x);
  const h = Math.min(Math.max(1, p.h + dh), 100);
  return { ...p, w: Math.max(1, w), h };
}

/** The body of `PUT /dashboards/{id}/layout`: every widget's place. */
export function placements(widgets: Pick<Widget, "id" | "position">[]): Array<{ id: number } & Position> {
  return widgets.map((w) => ({ id: w.id, ...w.position }));
}

/** Did any widget move or change size since the board was loaded? */
export function layoutChanged(before: Pick<Widget, "id" | "position">[], now: Pick<Widget, "id" | "position">[]): boolean {
  const old = new Map(before.map((w) => [w.id, w.position]));
  return now.some((w) => {
    const p = old.get(w.id);
    return !p || p.x !== w.position.x || p.y !== w.position.y || p.w !== w.position.w || p.h !== w.position.h;
  });
}

/** CSS grid placement of a widget (grid lines start at 1). */
export function gridArea(p: Position): { gridColumn: string; gridRow: string } {
  return { gridColumn: `${p.x + 1} / span ${p.w}`, gridRow: `${p.y + 1} / span ${p.h}` };
}

export interface ShownValue {
  text: string;
  /** Outside the configured [min, max] (stat) – shown as a warning. */
  warning: boolean;
}

/** How a stat shows a value: fixed decimals, the unit, a warning outside its range. */
export function statValue(value: unknown, cfg: { min?: number | null; max?: number | null; unit?: string | null; decimals?: number }): ShownValue {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    return { text: value === null || value === undefined ? "—" : String(value), warning: false };
  }
  const decimals = cfg.decimals ?? 1;
  const unit = cfg.unit ? ` ${cfg.unit}` : "";
  const low = cfg.min ?? null;
  const high = cfg.max ?? null;
  const warning = (low !== null && value < low) || (high !== null && value > high);
  return { text: `${value.toFixed(decimals)}${unit}`, warning };
}

/** Where a value sits on a gauge's dial, 0…1 (clamped); null without a number. */
export function gaugeFraction(value: unknown, min: number, max: number): number | null {
  if (typeof value !== "number" || !Number.isFinite(value) || !(max > min)) return null;
  return Math.min(1, Math.max(0, (value - min) / (max - min)));
}

/** Every channel the board's widgets show live (stats, gauges, charts), each once. */
export function widgetChannels(widgets: Pick<Widget, "kind" | "config">[]): string[] {
  const out = new Set<string>();
  for (const w of widgets) {
    if ((w.kind === "stat" || w.kind === "gauge") && typeof w.config.channel === "string") out.add(w.config.channel);
    if (w.kind === "line_chart" && Array.isArray(w.config.channels)) {
      for (const c of w.config.channels) if (typeof c === "string") out.add(c);
    }
  }
  return [...out];
}

/** The editor's form for a new widget (text fields as typed). */
export interface WidgetDraft {
  kind: WidgetKind;
  title: string;
  /** One channel (stat, gauge) or several separated by commas (line chart). */
  channels: string;
  device_id: string;
  /** Command names separated by commas; empty for every command of the device's type. */
  actions: string;
  min: string | number;
  max: string | number;
  unit: string;
  decimals: string | number;
  range: string;
  min_level: string;
  limit: string | number;
}

export function newWidgetDraft(kind: WidgetKind = "stat"): WidgetDraft {
  return {
    kind,
    title: "",
    channels: "",
    device_id: "",
    actions: "",
    min: "",
    max: "",
    unit: "",
    decimals: "1",
    range: "1h",
    min_level: "info",
    limit: "20",
  };
}

export type BuiltWidget =
  | { ok: true; body: { kind: WidgetKind; title: string; config: Record<string, unknown> } }
  | { ok: false; errors: Record<string, string> };

const list = (text: string): string[] =>
  text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);

// Vue's v-model on a number input hands over numbers, on others strings: accept both.
function num(raw: string | number, key: string, errors: Record<string, string>, required: boolean): number | null {
  const text = String(raw ?? "");
  if (text.trim() === "") {
    if (required) errors[key] = "Enter a number.";
    return null;
  }
  const n = Number(text);
  if (!Number.isFinite(n)) {
    errors[key] = "Enter a number.";
    return null;
  }
  return n;
}

/** The config a kind needs, from the editor's fields; the station checks it again (WIDGET_CONFIG_INVALID). */
export function buildWidget(d: WidgetDraft): BuiltWidget {
  const errors: Record<string, string> = {};
  const config: Record<string, unknown> = {};
  const channels = list(d.channels);
  const needsRange = d.kind === "gauge";
  const min = d.kind === "device_control" || d.kind === "event_list" ? null : num(d.min, "min", errors, needsRange);
  const max = d.kind === "device_control" || d.kind === "event_list" ? null : num(d.max, "max", errors, needsRange);
  if (min !== null && max !== null && min >= max) errors.max = "Must be above the minimum.";
  switch (d.kind) {
    case "stat":
    case "gauge": {
      if (channels.length !== 1) errors.channels = "Name one channel, e.g. device:demo-0001/temperature.";
      config.channel = channels[0] ?? "";
      if (min !== null || needsRange) config.min = min;
      if (max !== null || needsRange) config.max = max;
      if (d.unit.trim()) config.unit = d.unit.trim();
      const decimals = num(d.decimals, "decimals", errors, false);
      if (decimals !== null) {
        if (!Number.isInteger(decimals) || decimals < 0 || decimals > 6) errors.decimals = "0 to 6.";
        config.decimals = decimals;
      }
      break;
    }
    case "line_chart":
      if (channels.length < 1 || channels.length > 8) errors.channels = "Name 1 to 8 channels, separated by commas.";
      if (new Set(channels).size !== channels.length) errors.channels = "A channel is listed twice.";
      config.channels = channels;
      config.range = d.range in RANGE_SECONDS ? d.range : "24h";
      if (min !== null) config.min = min;
      if (max !== null) config.max = max;
      break;
    case "device_control": {
      if (!d.device_id.trim()) errors.device_id = "Name the device.";
      config.device_id = d.device_id.trim();
      const actions = list(d.actions);
      config.actions = actions.length ? actions : null;
      break;
    }
    case "event_list": {
      config.min_level = d.min_level;
      if (d.device_id.trim()) config.device_id = d.device_id.trim();
      const limit = num(d.limit, "limit", errors, false);
      if (limit !== null) {
        if (!Number.isInteger(limit) || limit < 1 || limit > 100) errors.limit = "1 to 100.";
        config.limit = limit;
      }
      break;
    }
  }
  if (Object.keys(errors).length) return { ok: false, errors };
  return { ok: true, body: { kind: d.kind, title: d.title.trim(), config } };
}
