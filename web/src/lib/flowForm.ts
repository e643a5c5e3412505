// The flow editor's checks before anything is sent (the station checks again and says why it refuses).

export interface FlowDraft {
  code: string;
  topic: string;
  action: "STORE_DB" | "POST_ENDPOINT";
  endpoint_url: string;
  schemaText: string;
  enabled: boolean;
}

export type FlowCheck = { ok: true; body: Record<string, unknown> } | { ok: false; errors: Record<string, string> };

export function checkFlow(draft: FlowDraft, creating: boolean): FlowCheck {
  const errors: Record<string, string> = {};
  if (creating && !/^[a-z0-9][a-z0-9_-]{0,63}$/i.test(draft.code)) {
    errors.code = "Letters, digits, - and _ (up to 64), starting with a letter or digit.";
  }
  if (!draft.topic.trim()) errors.topic = "A topic (filter) is required.";
  let schema: unknown = {};
  const text = draft.schemaText.trim();
  if (text) {
    try {
      schema = JSON.parse(text);
      if (!schema || typeof schema !== "object" || Array.isArray(schema)) {
        errors.payload_schema = "The schema must be a JSON object.";
      }
    } catch (err) {
      errors.payload_schema = `Not valid JSON: ${err instanceof Error ? err.message : String(err)}`;
    }
  }
  if (draft.action === "POST_ENDPOINT" && !/^https?:\/\//.test(draft.endpoint_url.trim())) {
    errors.endpoint_url = "An http:// or https:// URL is required for POST_ENDPOINT.";
  }
  if (Object.keys(errors).length) return { ok: false, errors };
  const body: Record<string, unknown> = {
    topic: draft.topic.trim(),
    action: draft.action,
    payload_schema: schema,
    enabled: draft.enabled,
    endpoint_url: draft.action === "POST_ENDPOINT" ? draft.endpoint_url.trim() : null,
  };
  if (creating) body.code = draft.code;
  return { ok: true, body };
}
