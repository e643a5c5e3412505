// Small formatting helpers shared by the views.

export function formatTime(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString();
}

export function timeAgo(iso: string | null | undefined, now: number = Date.now()): string {
  if (!iso) return "never";
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return iso;
  const s = Math.round((now - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function formatValue(value: unknown, unit?: string | null): string {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") {
    const text = Number.isInteger(value) ? String(value) : value.toFixed(2);
    return unit ? `${text} ${unit}` : text;
  }
  if (typeof value === "object") return JSON.stringify(value);
  return unit ? `${String(value)} ${unit}` : String(value);
}

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

/** The badge tone of a status word (device, command, delivery, link). */
export function tone(status: string | null | undefined): "ok" | "warn" | "bad" | "" {
  switch (status) {
    case "online":
    case "applied":
    case "accepted":
    case "delivered":
    case "connected":
    case "succeeded":
    case "completed":
    case "ok":
    case "live":
    case "started":
    case "executed":
    case "approved":
      return "ok";
    case "queued":
    case "sent":
    case "pending":
    case "retrying":
    case "connecting":
    case "running":
    case "unknown":
    case "writing":
    case "waiting_for_join":
      return "warn";
    case "offline":
    case "failed":
    case "timeout":
    case "dead":
    case "dead_letter":
    case "error":
    case "rejected":
    case "denied":
    case "expired":
      return "bad";
    default:
      return "";
  }
}
