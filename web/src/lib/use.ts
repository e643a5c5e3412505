// Composables: live events that unsubscribe with the component, a debounced reload, a loader with errors.

import { onBeforeUnmount, onMounted, ref, type Ref } from "vue";
import { errorMessage } from "../api/client";
import type { LiveHandler } from "../stores/live";
import { live } from "../stores/session";

/** Subscribe to live events while the component is mounted. */
export function useLive(pattern: string, fn: LiveHandler): void {
  let off: (() => void) | null = null;
  onMounted(() => (off = live.on(pattern, fn)));
  onBeforeUnmount(() => off?.());
}

/** Coalesce bursts of "something changed" into one reload at most every `ms`. */
export function debounced(fn: () => void, ms = 300): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

/** Run `fn` now and every `ms` while mounted (for numbers no event carries). */
export function usePolling(fn: () => unknown, ms: number): void {
  let timer: ReturnType<typeof setInterval> | undefined;
  onMounted(() => {
    void fn();
    timer = setInterval(() => void fn(), ms);
  });
  onBeforeUnmount(() => clearInterval(timer));
}

/** A value loaded from the station, with its error message and a reload function.
 *
 * Views also change the loaded value in place from live events. A response can be older than such an
 * event (the GET was answered before the event, which overtook it), so a view calls `changed()` for every
 * live event it applies in place, and a reload that saw one while on its way asks again instead of
 * putting the older snapshot back (up to MAX_LOAD_ATTEMPTS times; then it applies what it got, which may
 * miss an event of that last moment until the next one or the next reload). Only the newest of
 * overlapping reloads sets the value: `reload()` resolves to false when a newer one took over. */
export function useLoad<T>(fn: () => Promise<T>): {
  data: Ref<T | null>;
  error: Ref<string | null>;
  loading: Ref<boolean>;
  reload: () => Promise<boolean>;
  changed: () => void;
} {
  const data = ref<T | null>(null) as Ref<T | null>;
  const error = ref<string | null>(null);
  const loading = ref(false);
  let latest = 0; // the newest reload; older ones drop their response
  let liveChanges = 0;
  async function reload(): Promise<boolean> {
    const mine = ++latest;
    loading.value = true;
    try {
      for (let attempt = 1; ; attempt++) {
        const before = liveChanges;
        const value = await fn();
        if (mine !== latest) return false;
        if (before !== liveChanges && attempt < MAX_LOAD_ATTEMPTS) continue;
        data.value = value;
        error.value = null;
        return true;
      }
    } catch (err) {
      if (mine === latest) error.value = errorMessage(err);
      return false;
    } finally {
      if (mine === latest) loading.value = false;
    }
  }
  return { data, error, loading, reload, changed: () => void liveChanges++ };
}

const MAX_LOAD_ATTEMPTS = 3;

/** Run an action, keeping its error message for the screen. */
export function useAction(): { busy: Ref<boolean>; error: Ref<string | null>; run: (fn: () => Promise<unknown>) => Promise<boolean> } {
  const busy = ref(false);
  const error = ref<string | null>(null);
  async function run(fn: () => Promise<unknown>): Promise<boolean> {
    busy.value = true;
    error.value = null;
    try {
      await fn();
      return true;
    } catch (err) {
      error.value = errorMessage(err);
      return false;
    } finally {
      busy.value = false;
    }
  }
  return { busy, error, run };
}
