import { describe, expect, it } from "vitest";
import { isNewer } from "./telemetry";
import { useLoad } from "./use";

/** A fetch whose answers the test hands out one by one, in any order. */
function controlled<T>() {
  const pending: Array<(v: T) => void> = [];
  const fn = () => new Promise<T>((resolve) => pending.push(resolve));
  return { fn, pending };
}
const tick = () => new Promise((r) => setTimeout(r, 0));

describe("useLoad", () => {
  it("fetches again when a live change came while the answer was on its way", async () => {
    const { fn, pending } = controlled<string>();
    const load = useLoad(fn);
    const done = load.reload();
    load.changed(); // an event applied in place while the GET runs
    pending[0]!("before the event");
    await tick();
    expect(load.data.value).toBeNull(); // the older snapshot is not put back
    expect(pending).toHaveLength(2);
    pending[1]!("after the event");
    await done;
    expect(load.data.value).toBe("after the event");
  });

  it("keeps only the newest of overlapping reloads", async () => {
    const { fn, pending } = controlled<string>();
    const load = useLoad(fn);
    const first = load.reload();
    const second = load.reload();
    pending[1]!("new");
    expect(await second).toBe(true);
    pending[0]!("old");
    expect(await first).toBe(false); // superseded: callers must not read `data` as its answer
    expect(load.data.value).toBe("new");
    expect(load.loading.value).toBe(false);
  });

  it("gives up asking again after a few tries under a steady stream of changes", async () => {
    let calls = 0;
    const load = useLoad(async () => {
      calls += 1;
      load.changed();
      return calls;
    });
    await load.reload();
    expect(calls).toBe(3);
    expect(load.data.value).toBe(3);
  });
});

describe("isNewer", () => {
  it("compares instants, not strings", () => {
    expect(isNewer("2026-11-23T10:00:01+00:00", "2026-11-23T10:00:00.500000+00:00")).toBe(true);
    expect(isNewer("2026-11-23T09:59:59Z", "2026-11-23T10:00:00+00:00")).toBe(false);
    expect(isNewer("2026-11-23T10:00:00Z", null)).toBe(true);
  });
});
