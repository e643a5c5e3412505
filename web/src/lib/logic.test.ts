import { describe, expect, it } from "vitest";
import type { Device } from "../api/types";
import { buildParams, fieldsFromSchema, initialValues } from "./commandForm";
import { applyDeviceEvent, filterDevices } from "./devices";
import { checkFlow } from "./flowForm";
import { timeAgo, tone } from "./format";
import { roleAtLeast } from "./roles";

const brightness = {
  type: "object",
  properties: { brightness: { type: "integer", minimum: 0, maximum: 100 }, on: { type: "boolean" }, note: { type: "string", pattern: "^[a-z]+$" } },
  required: ["brightness"],
};

describe("command form", () => {
  it("derives fields from the schema", () => {
    const fields = fieldsFromSchema(brightness);
    expect(fields.map((f) => [f.name, f.kind, f.required])).toEqual([
      ["brightness", "integer", true],
      ["on", "boolean", false],
      ["note", "string", false],
    ]);
    expect(initialValues(fields)).toEqual({ brightness: "", on: false, note: "" });
  });

  it("converts and checks values", () => {
    const fields = fieldsFromSchema(brightness);
    expect(buildParams(fields, { brightness: 70, on: true, note: "" })).toEqual({ ok: true, params: { brightness: 70, on: true } });
    expect(buildParams(fields, { brightness: "7.5", on: false, note: "" })).toEqual({ ok: false, errors: { brightness: "Enter a whole number." } });
    expect(buildParams(fields, { brightness: "101", on: false, note: "" })).toEqual({ ok: false, errors: { brightness: "At most 100." } });
    expect(buildParams(fields, { brightness: "", on: false, note: "ABC" })).toEqual({
      ok: false,
      errors: { brightness: "Required.", note: "Does not have the expected format." },
    });
  });
});

const device = (id: string, extra: Partial<Device> = {}): Device => ({
  id, station_id: "s", type: "climate", name: null, zone: null, status: "unknown", last_seen: null,
  firmware_version: null, state: {}, enabled: true, created_at: "", ...extra,
});

describe("devices list", () => {
  it("filters by text, status and type", () => {
    const list = [device("a-1", { name: "Kitchen", status: "online" }), device("b-2", { type: "light", zone: "Hall" })];
    expect(filterDevices(list, { text: "kitch", status: "", type: "" }).map((d) => d.id)).toEqual(["a-1"]);
    expect(filterDevices(list, { text: "hall", status: "", type: "light" }).map((d) => d.id)).toEqual(["b-2"]);
    expect(filterDevices(list, { text: "", status: "online", type: "light" })).toEqual([]);
  });

  it("applies live events in place and asks for a reload when it cannot", () => {
    const list = [device("a-1")];
    expect(applyDeviceEvent(list, "device.online", { device_id: "a-1" })).toBe(true);
    expect(list[0]!.status).toBe("online");
    expect(applyDeviceEvent(list, "device.state_changed", { device_id: "a-1", state: { t: 1 }, ts: "2026-01-01T00:00:00Z" })).toBe(true);
    expect(list[0]!.state).toEqual({ t: 1 });
    expect(applyDeviceEvent(list, "device.created", { id: "new" })).toBe(false);
    expect(applyDeviceEvent(list, "device.deleted", { id: "a-1" })).toBe(true);
    expect(list).toEqual([]);
  });
});

describe("flow form", () => {
  const draft = { code: "room", topic: "a/+/b", action: "STORE_DB" as const, endpoint_url: "", schemaText: '{"t":"number"}', enabled: true };
  it("builds the body", () => {
    expect(checkFlow(draft, true)).toEqual({
      ok: true,
      body: { code: "room", topic: "a/+/b", action: "STORE_DB", payload_schema: { t: "number" }, enabled: true, endpoint_url: null },
    });
  });
  it("explains what is wrong", () => {
    const result = checkFlow({ ...draft, code: "-x", schemaText: "{oops", action: "POST_ENDPOINT" }, true);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(Object.keys(result.errors).sort()).toEqual(["code", "endpoint_url", "payload_schema"]);
    const arr = checkFlow({ ...draft, schemaText: "[1]" }, false);
    expect(arr.ok).toBe(false);
  });
});

describe("small helpers", () => {
  it("ranks roles", () => {
    expect(roleAtLeast("viewer", "member")).toBe(false);
    expect(roleAtLeast("admin", "member")).toBe(true);
    expect(roleAtLeast(undefined, "viewer")).toBe(false);
  });
  it("formats", () => {
    expect(timeAgo("2026-01-01T00:00:00Z", Date.parse("2026-01-01T00:02:00Z"))).toBe("2m ago");
    expect(tone("applied")).toBe("ok");
    expect(tone("timeout")).toBe("bad");
  });
});
