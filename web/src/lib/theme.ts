// Light and dark themes: follow the system unless the user picked one (kept in localStorage).

import { ref } from "vue";

export type ThemeChoice = "system" | "light" | "dark";
const KEY = "waystation.theme";

function stored(): ThemeChoice {
  const value = globalThis.localStorage?.getItem(KEY);
  return value === "light" || value === "dark" ? value : "system";
}

export const theme = ref<ThemeChoice>(stored());

export function applyTheme(choice: ThemeChoice): void {
  theme.value = choice;
  const root = document.documentElement;
  if (choice === "system") {
    delete root.dataset.theme;
    globalThis.localStorage?.removeItem(KEY);
  } else {
    root.dataset.theme = choice;
    globalThis.localStorage?.setItem(KEY, choice);
  }
}

/** system → light → dark → system */
export function nextTheme(choice: ThemeChoice): ThemeChoice {
  return choice === "system" ? "light" : choice === "light" ? "dark" : "system";
}
