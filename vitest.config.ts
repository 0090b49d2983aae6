// Host test runner settings; the Python worker has its own pytest suite under src/gpu/worker/tests.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
  },
});
