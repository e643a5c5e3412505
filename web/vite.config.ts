// Build into the Python package (served by the station at /); `npm run dev` proxies the API to a station.
import { fileURLToPath } from "node:url";
import vue from "@vitejs/plugin-vue";
import { defineConfig } from "vitest/config";

const station = process.env.WAYSTATION_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [vue()],
  build: {
    outDir: fileURLToPath(new URL("../src/waystation/web/dist", import.meta.url)),
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2022",
    chunkSizeWarningLimit: 200,
  },
  server: {
    proxy: {
      "/api": { target: station, changeOrigin: true, ws: true },
      "/healthz": station,
      "/readyz": station,
      "/metrics": station,
    },
  },
  test: {
    environment: "happy-dom",
    include: ["src/**/*.test.ts"],
  },
});
