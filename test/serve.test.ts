// What `make demo` runs, end to end on one machine: the real worker on the committed bundle, the bundle's pool
// ingested into an empty data folder, the web chat answering /imagine with an image made with retrieved LoRAs.
import { existsSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { WebChat } from "../src/bots/web/server.js";
import { startServing } from "../src/cli/serve.js";

const root = join(import.meta.dirname, "..");

describe.runIf(existsSync(join(root, ".venv", "bin", "python")))("autolora serve", () => {
  it("serves /imagine over the web chat with LoRAs retrieved from the bundle's pool", async () => {
    const data = await mkdtemp(join(tmpdir(), "autolora-serve-"));
    const log: string[] = [];
    const serving = await startServing({ AUTOLORA_DATA_DIR: data, AUTOLORA_WEB__PORT: "0", PATH: process.env.PATH }, (line) => log.push(line));
    try {
      expect(log).toContain("[pool] 160/160 added");
      expect(await serving.host.pool.index.count()).toBe(160);
      const web = serving.adapters.find((adapter) => adapter.name === "web") as WebChat;
      const url = web.url!;
      const page = await fetch(url);
      const cookie = page.headers.get("set-cookie")!.split(";")[0]!;
      const headers = { cookie, origin: url, "content-type": "application/json" };
      const events = await fetch(`${url}/api/events`, { headers: { cookie } });
      const posted = await fetch(`${url}/api/command`, { method: "POST", headers, body: JSON.stringify({ text: "/imagine a red hexagon with stripes" }) });
      expect(posted.status).toBe(202);
      const reader = events.body!.getReader();
      let buffer = "";
      let answer: { images?: { webp: string; grid: string }; loras?: Array<{ name: string; similarity: number }>; error?: string } | undefined;
      while (!answer?.images && !answer?.error) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += new TextDecoder().decode(value);
        for (const block of buffer.split("\n\n").slice(0, -1)) {
          const data = block.split("\n").find((line) => line.startsWith("data: "));
          const message = data ? JSON.parse(data.slice(6)) : undefined;
          if (message?.author === "bot") answer = message;
        }
        buffer = buffer.slice(buffer.lastIndexOf("\n\n") + 2);
      }
      await reader.cancel();
      expect(answer?.error).toBeUndefined();
      expect(answer!.loras!.length).toBe(3);
      expect(answer!.loras!.every((lora) => lora.similarity > 0.2)).toBe(true);
      expect(answer!.loras!.some((lora) => /hexagon|striped/.test(lora.name))).toBe(true);
      const image = await fetch(`${url}${answer!.images!.webp}`);
      expect(image.headers.get("content-type")).toBe("image/webp");
      expect((await image.arrayBuffer()).byteLength).toBeGreaterThan(500);
    } finally {
      await serving.stop();
    }
  }, 180_000);
});
