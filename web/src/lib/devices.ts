// The devices list's filtering and live merging, kept out of the component so it can be tested.

import type { Device, DeviceStatus } from "../api/types";

export interface DeviceFilter {
  text: string;
  status: DeviceStatus | "";
  type: string;
}

export function filterDevices(devices: Device[], filter: DeviceFilter): Device[] {
  const text = filter.text.trim().toLowerCase();
  return devices.filter(
    (d) =>
      (!filter.status || d.status === filter.status) &&
      (!filter.type || d.type === filter.type) &&
      (!text ||
        d.id.toLowerCase().includes(text) ||
        (d.name ?? "").toLowerCase().includes(text) ||
        (d.zone ?? "").toLowerCase().includes(text)),
  );
}

/** Apply a `device.*` event to the list in place; returns false when a reload is needed (new device). */
export function applyDeviceEvent(devices: Device[], type: string, data: Record<string, unknown>): boolean {
  const id = typeof data.device_id === "string" ? data.device_id : typeof data.id === "string" ? data.id : null;
  if (!id) return true;
  const index = devices.findIndex((d) => d.id === id);
  if (type === "device.deleted") {
    if (index >= 0) devices.splice(index, 1);
    return true;
  }
  const device = index >= 0 ? devices[index] : undefined;
  if (!device) return type === "device.state_changed"; // an unknown device: reload (unless just state)
  const now = new Date().toISOString();
  switch (type) {
    case "device.online":
      device.status = "online";
      device.last_seen = now;
      return true;
    case "device.offline":
      device.status = "offline";
      return true;
    case "device.state_changed":
      if (data.state && typeof data.state === "object") {
        device.state = { ...device.state, ...(data.state as Record<string, unknown>) };
      }
      device.last_seen = typeof data.ts === "string" ? data.ts : now;
      return true;
    default:
      return false; // created/updated: fetch the new shape
  }
}
