import { describe, expect, it } from "vitest";
import type { Widget } from "../api/types";
import {
  buildWidget,
  canEditBoard,
  firstFreeSpot,
  gaugeFraction,
  gridArea,
  layoutChanged,
  moveBy,
  newWidgetDraft,
  placements,
  readingOrder,
  resizeBy,
  statValue,
  widgetChannels,
} from "./dashboards";

const widget = (id: number, kind: Widget["kind"], x: number, y: number, w: number, h: number, config: Record<string, unknown> = {}): Widget => ({
  id,
  dashboard_id: 1,
  kind,
  title: "",
  position: { x, y, w, h },
  config,
});

describe("who edits a dashboard", () => {
  it("lets only the owner change a personal board, whatever their role", () => {
    const personal = { shared: false, owner_id: 7 };
    expect(canEditBoard(personal, 7, "viewer")).toBe(true);
    expect(canEditBoard(personal, 8, "owner")).toBe(false);
    expect(canEditBoard(personal, undefined, "owner")).toBe(false);
  });
  it("lets members and up change a shared board, never viewers", () => {
    const shared = { shared: true, owner_id: null };
    expect(canEditBoard(shared, 1, "viewer")).toBe(false);
    expect(canEditBoard(shared, 1, null)).toBe(false);
    expect(canEditBoard(shared, 1, "member")).toBe(true);
    expect(canEditBoard(shared, 1, "admin")).toBe(true);
  });
});

describe("grid placement", () => {
  it("finds the first free spot, left to right and top to bottom", () => {
    const taken = [{ x: 0, y: 0, w: 3, h: 2 }, { x: 3, y: 0, w: 6, h: 4 }];
    expect(firstFreeSpot([], 12, 3, 2)).toEqual({ x: 0, y: 0, w: 3, h: 2 });
    expect(firstFreeSpot(taken, 12, 3, 2)).toEqual({ x: 9, y: 0, w: 3, h: 2 });
    expect(firstFreeSpot(taken, 12, 4, 2)).toEqual({ x: 0, y: 4, w: 4, h: 2 });
    expect(firstFreeSpot(taken, 12, 3, 3)).toEqual({ x: 9, y: 0, w: 3, h: 3 });
    // Wider than the grid: clamped to its width.
    expect(firstFreeSpot([], 4, 9, 1)).toEqual({ x: 0, y: 0, w: 4, h: 1 });
  });

  it("moves within the grid and never past its edges", () => {
    const p = { x: 0, y: 0, w: 4, h: 2 };
    expect(moveBy(p, "left", 12)).toEqual(p);
    expect(moveBy(p, "up", 12)).toEqual(p);
    expect(moveBy(p, "right", 12)).toEqual({ ...p, x: 1 });
    expect(moveBy(p, "down", 12)).toEqual({ ...p, y: 1 });
    expect(moveBy({ ...p, x: 8 }, "right", 12)).toEqual({ ...p, x: 8 }); // x + w = 12 already
  });

  it("resizes within 1…columns − x wide and 1…100 high", () => {
    const p = { x: 8, y: 0, w: 3, h: 1 };
    expect(resizeBy(p, 1, 0, 12)).toEqual({ ...p, w: 4 });
    expect(resizeBy(p, 5, 0, 12)).toEqual({ ...p, w: 4 });
    expect(resizeBy(p, -9, -9, 12)).toEqual({ ...p, w: 1, h: 1 });
    expect(resizeBy({ ...p, h: 100 }, 0, 1, 12).h).toBe(100);
  });

  it("lists widgets in reading order, places them on CSS grid lines and sends every place", () => {
    const ws = [widget(1, "stat", 6, 2, 3, 2), widget(2, "gauge", 0, 2, 3, 3), widget(3, "stat", 9, 0, 3, 2)];
    expect(readingOrder(ws).map((w) => w.id)).toEqual([3, 2, 1]);
    expect(gridArea({ x: 0, y: 2, w: 3, h: 3 })).toEqual({ gridColumn: "1 / span 3", gridRow: "3 / span 3" });
    expect(placements(ws)).toEqual([
      { id: 1, x: 6, y: 2, w: 3, h: 2 },
      { id: 2, x: 0, y: 2, w: 3, h: 3 },
      { id: 3, x: 9, y: 0, w: 3, h: 2 },
    ]);
  });

  it("notices a moved or resized widget", () => {
    const before = [widget(1, "stat", 0, 0, 3, 2)];
    expect(layoutChanged(before, [widget(1, "stat", 0, 0, 3, 2)])).toBe(false);
    expect(layoutChanged(before, [widget(1, "stat", 1, 0, 3, 2)])).toBe(true);
    expect(layoutChanged(before, [widget(1, "stat", 0, 0, 3, 3)])).toBe(true);
  });
});

describe("showing values", () => {
  it("formats a stat with its decimals and unit, warning outside its range", () => {
    expect(statValue(21.456, { decimals: 1, unit: "°C" })).toEqual({ text: "21.5 °C", warning: false });
    expect(statValue(31, { max: 30, decimals: 0 })).toEqual({ text: "31", warning: true });
    expect(statValue(-1, { min: 0 })).toEqual({ text: "-1.0", warning: true });
    expect(statValue(null, {})).toEqual({ text: "—", warning: false });
    expect(statValue("on", {})).toEqual({ text: "on", warning: false });
  });

  it("puts a gauge's value on its dial, clamped", () => {
    expect(gaugeFraction(15, -10, 40)).toBeCloseTo(0.5);
    expect(gaugeFraction(99, 0, 10)).toBe(1);
    expect(gaugeFraction(-5, 0, 10)).toBe(0);
    expect(gaugeFraction(null, 0, 10)).toBeNull();
    expect(gaugeFraction(5, 10, 0)).toBeNull();
  });

  it("collects each live channel of a board once", () => {
    const ws = [
      widget(1, "stat", 0, 0, 1, 1, { channel: "device:a/t" }),
      widget(2, "line_chart", 0, 0, 1, 1, { channels: ["device:a/t", "device:a/h"] }),
      widget(3, "gauge", 0, 0, 1, 1, { channel: "device:b/p", min: 0, max: 1 }),
      widget(4, "device_control", 0, 0, 1, 1, { device_id: "a" }),
    ];
    expect(widgetChannels(ws)).toEqual(["device:a/t", "device:a/h", "device:b/p"]);
  });
});

describe("the add-widget form", () => {
  it("builds each kind's config", () => {
    const stat = { ...newWidgetDraft("stat"), title: " Air ", channels: "device:a/t", unit: "°C", max: 30 };
    expect(buildWidget(stat)).toEqual({
      ok: true,
      body: { kind: "stat", title: "Air", config: { channel: "device:a/t", max: 30, unit: "°C", decimals: 1 } },
    });
    const chart = { ...newWidgetDraft("line_chart"), channels: "device:a/t, device:a/h", range: "15m" };
    expect(buildWidget(chart)).toEqual({
      ok: true,
      body: { kind: "line_chart", title: "", config: { channels: ["device:a/t", "device:a/h"], range: "15m" } },
    });
    const control = { ...newWidgetDraft("device_control"), device_id: "fan-1" };
    expect(buildWidget(control)).toMatchObject({ ok: true, body: { config: { device_id: "fan-1", actions: null } } });
    const events = { ...newWidgetDraft("event_list"), min_level: "warning", limit: "5" };
    expect(buildWidget(events)).toMatchObject({ ok: true, body: { config: { min_level: "warning", limit: 5 } } });
  });

  it("says what is missing or wrong", () => {
    expect(buildWidget({ ...newWidgetDraft("gauge"), channels: "device:a/t" })).toEqual({
      ok: false,
      errors: { min: "Enter a number.", max: "Enter a number." },
    });
    expect(buildWidget({ ...newWidgetDraft("stat"), channels: "a, b" })).toMatchObject({ ok: false, errors: { channels: expect.any(String) } });
    expect(buildWidget({ ...newWidgetDraft("stat"), channels: "a", min: "5", max: "1" })).toMatchObject({ ok: false, errors: { max: expect.any(String) } });
    expect(buildWidget({ ...newWidgetDraft("line_chart"), channels: "a, a" })).toMatchObject({ ok: false, errors: { channels: expect.any(String) } });
    expect(buildWidget({ ...newWidgetDraft("device_control") })).toMatchObject({ ok: false, errors: { device_id: expect.any(String) } });
    expect(buildWidget({ ...newWidgetDraft("event_list"), limit: "500" })).toMatchObject({ ok: false, errors: { limit: expect.any(String) } });
  });
});
