// The rule form: a rule as editable text fields and back (create and PATCH send the same definition).
//
// Action shapes (docs/rules.md): {"type":"webhook"}, {"type":"log","level","message"?},
// {"type":"command","device_id","action","params"}, {"type":"alert","severity","message"?}.

import type { Rule, RuleAction } from "../api/types";

export type ActionType = RuleAction["type"];

export interface ActionDraft {
  type: ActionType;
  message: string;
  level: "debug" | "info" | "warning" | "error";
  severity: "info" | "warning" | "critical";
  device_id: string;
  action: string;
  /** The command's parameters as JSON text (an object). */
  params: string;
}

export interface RuleDraft {
  name: string;
  trigger: "channel" | "event";
  channel: string;
  event: string;
  device_id: string;
  /** "" means no comparison (event rules only). */
  operator: string;
  threshold: string | number; // a number once typed into a number input
  threshold_high: string | number; // a number once typed into a number input
  for_seconds: string | number; // a number once typed into a number input
  cooldown_seconds: string | number; // a number once typed into a number input
  actions: ActionDraft[];
}

export const MAX_ACTIONS = 10;

export function newAction(type: ActionType = "alert"): ActionDraft {
  return { type, message: "", level: "warning", severity: "warning", device_id: "", action: "", params: "{}" };
}

export function newRule(): RuleDraft {
  return {
    name: "",
    trigger: "channel",
    channel: "",
    event: "",
    device_id: "",
    operator: "gt",
    threshold: "",
    threshold_high: "",
    for_seconds: "0",
    cooldown_seconds: "60",
    actions: [newAction("alert")],
  };
}

const text = (v: unknown): string => (v === null || v === undefined ? "" : String(v));

/** An existing rule as a draft, for editing. */
export function draftOf(rule: Rule): RuleDraft {
  return {
    name: rule.name,
    trigger: rule.event ? "event" : "channel",
    channel: text(rule.channel),
    event: text(rule.event),
    device_id: text(rule.device_id),
    operator: text(rule.operator),
    threshold: text(rule.threshold),
    threshold_high: text(rule.threshold_high),
    for_seconds: text(rule.for_seconds),
    cooldown_seconds: text(rule.cooldown_seconds),
    actions: rule.actions.map((a) => ({
      ...newAction(a.type),
      message: text(a.message),
      level: (a.level as ActionDraft["level"]) ?? "warning",
      severity: (a.severity as ActionDraft["severity"]) ?? "warning",
      device_id: text(a.device_id),
      action: text(a.action),
      params: JSON.stringify(a.params ?? {}),
    })),
  };
}

export type Built = { ok: true; body: Record<string, unknown> } | { ok: false; errors: Record<string, string> };

// Vue's v-model on a number input hands over numbers, on others strings: accept both.
function number(raw: string | number, key: string, errors: Record<string, string>, required: boolean): number | null {
  const value = String(raw ?? "");
  if (value.trim() === "") {
    if (required) errors[key] = "Enter a number.";
    return null;
  }
  const n = Number(value);
  if (!Number.isFinite(n)) {
    errors[key] = "Enter a number.";
    return null;
  }
  return n;
}

function buildAction(a: ActionDraft, i: number, errors: Record<string, string>): RuleAction | null {
  const message = a.message.trim();
  switch (a.type) {
    case "webhook":
      return { type: "webhook" };
    case "log":
      return { type: "log", level: a.level, ...(message ? { message } : {}) };
    case "alert":
      return { type: "alert", severity: a.severity, ...(message ? { message } : {}) };
    case "command": {
      if (!a.device_id.trim()) errors[`actions.${i}.device_id`] = "Name the device.";
      if (!a.action.trim()) errors[`actions.${i}.action`] = "Name the command.";
      let params: unknown = {};
      try {
        params = a.params.trim() ? JSON.parse(a.params) : {};
      } catch {
        errors[`actions.${i}.params`] = "Not valid JSON.";
      }
      if (params === null || typeof params !== "object" || Array.isArray(params)) {
        errors[`actions.${i}.params`] ??= "Write the parameters as a JSON object, e.g. {\"on\": true}.";
      }
      return { type: "command", device_id: a.device_id.trim(), action: a.action.trim(), params };
    }
  }
}

/**
 * The rule's definition for `POST /rules` or `PATCH /rules/{id}`. Every field is sent (cleared ones as
 * null), so a PATCH replaces the definition as the form shows it; the station checks it again.
 */
export function buildRule(d: RuleDraft): Built {
  const errors: Record<string, string> = {};
  if (!d.name.trim()) errors.name = "Give the rule a name.";
  const isEvent = d.trigger === "event";
  if (isEvent && !d.event.trim()) errors.event = "Name the event.";
  if (!isEvent && !d.channel.trim()) errors.channel = "Name the channel.";
  const compares = d.operator !== "";
  if (!isEvent && !compares) errors.operator = "A channel rule compares its value.";
  const between = d.operator.includes("between");
  const threshold = compares ? number(d.threshold, "threshold", errors, true) : null;
  const high = between ? number(d.threshold_high, "threshold_high", errors, true) : null;
  if (threshold !== null && high !== null && high <= threshold) errors.threshold_high = "Must be above the threshold.";
  const forSeconds = number(d.for_seconds, "for_seconds", errors, false) ?? 0;
  const cooldown = number(d.cooldown_seconds, "cooldown_seconds", errors, false) ?? 0;
  if (d.actions.length === 0) errors.actions = "Add at least one action.";
  if (d.actions.length > MAX_ACTIONS) errors.actions = `At most ${MAX_ACTIONS} actions.`;
  const actions = d.actions.map((a, i) => buildAction(a, i, errors));
  if (Object.keys(errors).length) return { ok: false, errors };
  return {
    ok: true,
    body: {
      name: d.name.trim(),
      channel: isEvent ? null : d.channel.trim(),
      event: isEvent ? d.event.trim() : null,
      device_id: isEvent && d.device_id.trim() ? d.device_id.trim() : null,
      operator: compares ? d.operator : null,
      threshold,
      threshold_high: high,
      for_seconds: forSeconds,
      cooldown_seconds: cooldown,
      actions,
    },
  };
}
