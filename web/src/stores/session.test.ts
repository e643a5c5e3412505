import { beforeEach, describe, expect, it } from "vitest";
import type { Me, StationRole } from "../api/types";
import { cloudActions } from "../lib/cloud";
import { pickStation, roleAt } from "../lib/roles";
import { NAV, visibleNav } from "../nav";
import { applyMe, can, canAt, canIn, canInstallation, selectStation, session, stationRole } from "./session";

const A: StationRole = { id: "a", name: "Barn", is_default: true, role: "viewer" };
const B: StationRole = { id: "b", name: "Greenhouse", is_default: false, role: "admin" };
const me = (role: Me["role"], stations?: StationRole[]): Me => ({
  id: 3,
  username: "alice",
  role,
  disabled: false,
  created_at: "2026-01-01T00:00:00Z",
  stations,
});
const labels = () => visibleNav(NAV, canIn).map((i) => i.label);

describe("per-station roles", () => {
  beforeEach(() => {
    localStorage.clear();
    session.station = null;
  });

  it("picks the remembered station, else the default one, else the first", () => {
    expect(pickStation([A, B], "b")?.id).toBe("b");
    expect(pickStation([A, B], "gone")?.id).toBe("a");
    expect(pickStation([B], null)?.id).toBe("b");
    expect(pickStation([], null)).toBeNull();
    expect(roleAt([A, B], "b")).toBe("admin");
    expect(roleAt([A, B], "c")).toBeNull();
  });

  it("follows the role at the station being viewed, not the highest one", () => {
    applyMe(me("viewer", [A, B]), null);
    expect(session.station?.id).toBe("a");
    expect(stationRole()).toBe("viewer");
    expect(can("member")).toBe(false);
    expect(labels()).not.toContain("Webhooks");

    selectStation("b");
    expect(stationRole()).toBe("admin");
    expect(can("admin")).toBe(true);
    expect(labels()).toContain("Webhooks");
    expect(labels()).toContain("Users & tokens");
    // Installation-wide sections follow the installation role: a station admin is not an installation admin.
    expect(canInstallation("admin")).toBe(false);
    expect(labels()).not.toContain("Flows");
    expect(labels()).not.toContain("Snapshots");
    // A resource's own station decides its controls, whichever station is viewed.
    expect(canAt("a", "member")).toBe(false);
    expect(canAt("b", "member")).toBe(true);
    // The choice is remembered.
    applyMe(me("viewer", [A, B]), null);
    expect(session.station?.id).toBe("b");
  });

  it("gives installation owners and admins everything, and falls back without a station list", () => {
    applyMe(me("owner", [{ ...A, role: "owner" }]), null);
    expect(labels()).toEqual(NAV.map((i) => i.label));
    expect(canIn("installation", "owner")).toBe(true);

    applyMe(me("member"), { id: "a", name: "Barn", is_default: true });
    expect(session.stations).toEqual([{ id: "a", name: "Barn", is_default: true, role: "member" }]);
    expect(can("member")).toBe(true);
    expect(can("admin")).toBe(false);
  });
});

describe("cloud view actions", () => {
  it("lets only owners claim and unclaim, and shows the credentials when the station sent them", () => {
    const off = { state: "disabled", enabled: false, claimed: false, chip_id: "ws-1", claim_secret: "s" };
    expect(cloudActions(off, true)).toEqual({ showCredentials: true, canClaim: true, claimLabel: "Claim", canUnclaim: false });
    expect(cloudActions({ ...off, enabled: true, state: "connected", claimed: true }, true)).toMatchObject({ canClaim: true, canUnclaim: true });
    expect(cloudActions(off, false)).toMatchObject({ showCredentials: true, canClaim: false, canUnclaim: false });
    expect(cloudActions({ ...off, chip_id: null, claim_secret: null }, false)).toMatchObject({ showCredentials: false });
    expect(cloudActions(null, true)).toMatchObject({ canClaim: false, canUnclaim: false });
  });
});
