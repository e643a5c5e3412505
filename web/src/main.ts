// The web UI's entry point: theme, router, the app shell.

import { createApp } from "vue";
import App from "./App.vue";
import { applyTheme, theme } from "./lib/theme";
import { router } from "./router";
import "./style.css";

applyTheme(theme.value);
createApp(App).use(router).mount("#app");
