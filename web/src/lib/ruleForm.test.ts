import { describe, expect, it } from "vitest";
import type { Rule } from "../api/types";
import { buildRule, draftOf, newAction, newRule } from "./ruleForm";

const rule: Rule = {
  id: 4,
  station_id: "s1",
  name: "Too warm",
  description: "",
  enabled: true,
  channel: "device:gh-1/temperature",
  event: null,
  device_id: null,
  operator: "between",
  threshold: 10,
  threshold_high: 30,
  for_seconds: 5,
  cooldown_seconds: 60,
  actions: [
    { type: "webhook" },
    { type: "command", device_id: "fan-1", action: "set_power", params: { on: true } },
    { type: "log", level: "info", message: "{rule} fired" },
  ],
  last_fired_at: null,
};

describe("rule form", () => {
  it("round-trips a rule with webhook, command and log actions (the PATCH body)", () => {
    const built = buildRule(draftOf(rule));
    expect(built).toEqual({
      ok: true,
      body: {
        name: "Too warm",
        channel: "device:gh-1/temperature",
        event: null,
        device_id: null,
        operator: "between",
        threshold: 10,
        threshold_high: 30,
        for_seconds: 5,
        cooldown_seconds: 60,
        actions: [
          { type: "webhook" },
          { type: "command", device_id: "fan-1", action: "set_power", params: { on: true } },
          { type: "log", level: "info", message: "{rule} fired" },
        ],
      },
    });
  });

  it("builds a new threshold rule with an alert", () => {
    // A number input's v-model gives a number, not text.
    const d = { ...newRule(), name: "Hot", channel: "device:a/t", threshold: 30, cooldown_seconds: 5 };
    expect(buildRule(d)).toMatchObject({
      ok: true,
      body: { operator: "gt", threshold: 30, threshold_high: null, cooldown_seconds: 5, actions: [{ type: "alert", severity: "warning" }] },
    });
  });

  it("builds an event rule without a comparison", () => {
    const d = { ...newRule(), name: "Motion", trigger: "event" as const, event: "motion_detected", device_id: "cam-1", operator: "" };
    expect(buildRule(d)).toMatchObject({
      ok: true,
      body: { channel: null, event: "motion_detected", device_id: "cam-1", operator: null, threshold: null },
    });
  });

  it("says what is wrong with a command action and the thresholds", () => {
    const bad = { ...newAction("command"), params: "{on: true}" };
    const d = { ...newRule(), name: "x", channel: "device:a/t", operator: "between", threshold: "5", threshold_high: "1", actions: [bad] };
    const built = buildRule(d);
    expect(built.ok).toBe(false);
    if (!built.ok) {
      expect(Object.keys(built.errors).sort()).toEqual(["actions.0.action", "actions.0.device_id", "actions.0.params", "threshold_high"]);
    }
    const arr = { ...newRule(), name: "x", channel: "c", threshold: "1", actions: [{ ...newAction("command"), device_id: "d", action: "a", params: "[1]" }] };
    expect(buildRule(arr)).toMatchObject({ ok: false, errors: { "actions.0.params": expect.any(String) } });
    expect(buildRule({ ...newRule(), name: "x", channel: "c", threshold: "1", actions: [] })).toMatchObject({ ok: false, errors: { actions: expect.any(String) } });
  });
});
