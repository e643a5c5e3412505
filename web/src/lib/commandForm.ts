// Turn a device type's command schema into form fields, and the typed-in text back into parameters.

import type { JsonSchema } from "../api/types";

export type FieldKind = "integer" | "number" | "boolean" | "string" | "enum" | "json";

export interface Field {
  name: string;
  kind: FieldKind;
  required: boolean;
  min?: number;
  max?: number;
  options?: string[];
  pattern?: string;
}

export function fieldsFromSchema(schema: JsonSchema | undefined): Field[] {
  const props = schema?.properties ?? {};
  const required = new Set(schema?.required ?? []);
  return Object.entries(props).map(([name, prop]) => {
    const type = Array.isArray(prop.type) ? prop.type.find((t) => t !== "null") : prop.type;
    let kind: FieldKind = "json";
    if (prop.enum) kind = "enum";
    else if (type === "integer" || type === "number" || type === "boolean" || type === "string") kind = type;
    return {
      name,
      kind,
      required: required.has(name),
      min: prop.minimum,
      max: prop.maximum,
      options: prop.enum?.map(String),
      pattern: prop.pattern,
    };
  });
}

// v-model on a number input gives numbers, on others strings.
export type FormValues = Record<string, string | number | boolean>;

export function initialValues(fields: Field[]): FormValues {
  return Object.fromEntries(fields.map((f) => [f.name, f.kind === "boolean" ? false : ""]));
}

export type BuildResult =
  | { ok: true; params: Record<string, unknown> }
  | { ok: false; errors: Record<string, string> };

/** Check and convert the form's values; the station checks again (422 with its own message). */
export function buildParams(fields: Field[], values: FormValues): BuildResult {
  const params: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const field of fields) {
    const raw = values[field.name];
    if (field.kind === "boolean") {
      params[field.name] = raw === true;
      continue;
    }
    const text = raw === undefined || raw === null ? "" : String(raw).trim();
    if (text === "") {
      if (field.required) errors[field.name] = "Required.";
      continue;
    }
    if (field.kind === "integer" || field.kind === "number") {
      const n = Number(text);
      if (!Number.isFinite(n) || (field.kind === "integer" && !Number.isInteger(n))) {
        errors[field.name] = field.kind === "integer" ? "Enter a whole number." : "Enter a number.";
        continue;
      }
      if (field.min !== undefined && n < field.min) {
        errors[field.name] = `At least ${field.min}.`;
        continue;
      }
      if (field.max !== undefined && n > field.max) {
        errors[field.name] = `At most ${field.max}.`;
        continue;
      }
      params[field.name] = n;
    } else if (field.kind === "json") {
      try {
        params[field.name] = JSON.parse(text);
      } catch {
        errors[field.name] = "Enter valid JSON.";
      }
    } else {
      if (field.pattern && !new RegExp(field.pattern).test(text)) {
        errors[field.name] = "Does not have the expected format.";
        continue;
      }
      params[field.name] = text;
    }
  }
  return Object.keys(errors).length ? { ok: false, errors } : { ok: true, params };
}

/** The terminal command states: nothing changes after these (except a late ack after a timeout). */
export const FINAL_STATUSES = new Set(["applied", "failed", "timeout"]);
