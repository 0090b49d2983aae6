// What `make demo` runs, end to end on one machine: the real worker on the committed bundle, the bundle's pool
// ingested into an empty data folder, the web chat answering /imagine with an image made with retrieved LoRAs.
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { WebChat } from "../src/bots/web/server.js";
import { main } from "../src/cli/main.js";
import { startServing } from "../src/cli/serve.js";
import { describeRequiring, pythonWorker } from "./helpers/requirements.js";

describeRequiring(pythonWorker)("autolora serve", () => {
  let data = "";

  it("serves /imagine over the web chat with LoRAs retrieved from the bundle's pool", async () => {
    data = await mkdtemp(join(tmpdir(), "autolora-serve-"));
    const log: string[] = [];
    const serving = await startServing({
      AUTOLORA_DATA_DIR: data, AUTOLORA_WEB__PORT: "0", PATH: process.env.PATH,
      // Remote workers' LoRA files by hash, beside the chat.
      AUTOLORA_WORKERS__POOL_SERVER__ENABLED: "true", AUTOLORA_WORKERS__POOL_SERVER__PORT: "0", AUTOLORA_WORKER_TOKEN: "remote-workers-token",
    }, (line) => log.push(line));
    try {
      const bundled = (JSON.parse(readFileSync("bundle/pool/pool.json", "utf8")) as { loras: unknown[] }).loras.length;
      expect(bundled).toBeGreaterThanOrEqual(100);
      expect(log).toContain(`[pool] ${bundled}/${bundled} added`);
      expect(await serving.host.pool.index.count()).toBe(bundled);
      const web = serving.chats.running().find((adapter) => adapter.name === "web") as WebChat;
      const url = web.url!;
      const page = await fetch(url);
      const cookie = page.headers.get("set-cookie")!.split(";")[0]!;
      const headers = { cookie, origin: url, "content-type": "application/json" };
      const events = await fetch(`${url}/api/events`, { headers: { cookie } });
      const posted = await fetch(`${url}/api/command`, { method: "POST", headers, body: JSON.stringify({ text: "/imagine a red hexagon with stripes" }) });
      expect(posted.status).toBe(202);
      const reader = events.body!.getReader();
      let buffer = "";
      let answer: { text: string; image?: string; buttons?: unknown[]; error?: boolean } | undefined;
      while (!answer?.buttons && !answer?.error) {
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
      expect(answer?.error, answer?.text).toBeUndefined();
      // "LoRAs: name (0.83), name (0.61), …" under the prompt
      const loras = [...answer!.text.split("\n")[1]!.matchAll(/([\w -]+?) \((\d\.\d\d)\)/g)].map((match) => ({ name: match[1]!.trim(), similarity: Number(match[2]) }));
      // Covering retrieval: the prompt names an object and a style, so one LoRA of each (top-k gave three hexagons).
      expect(loras.map((lora) => lora.name)).toEqual([expect.stringMatching(/^shape-hexagon-/), expect.stringMatching(/^style-striped-/)]);
      expect(loras.every((lora) => lora.similarity > 0.2)).toBe(true);
      // A remote worker gets a pool LoRA's bytes by its hash, with the token only.
      const [lora] = await serving.host.pool.index.list({}, 1);
      const poolUrl = serving.host.poolServer!.url!;
      const served = await fetch(`${poolUrl}/pool/${lora!.id}`, { headers: { authorization: "Bearer remote-workers-token" } });
      expect(createHash("sha256").update(Buffer.from(await served.arrayBuffer())).digest("hex")).toBe(lora!.id);
      expect((await fetch(`${poolUrl}/pool/${lora!.id}`)).status).toBe(401);
      expect(log.join("\n")).not.toContain("remote-workers-token");
      const image = await fetch(`${url}${answer!.image!}`);
      expect(image.headers.get("content-type")).toBe("image/webp");
      expect((await image.arrayBuffer()).byteLength).toBeGreaterThan(500);
    } finally {
      await serving.stop();
    }
  }, 180_000);

  it("makes one grid from the command line with `autolora imagine` on the same data folder", async () => {
    expect(data).not.toBe(""); // the pool the test above seeded
    const out = join(data, "out");
    const lines: string[] = [];
    const code = await main(["imagine", "a", "dotted", "star", "--k", "2", "--seed", "5", "--out", out, "--json"], {
      stdout: (line) => lines.push(line), stderr: () => undefined, env: { AUTOLORA_DATA_DIR: data, PATH: process.env.PATH },
    });
    expect(code).toBe(0);
    const report = JSON.parse(lines.at(-1)!);
    expect(report).toMatchObject({ prompt: "a dotted star", seeds: [5, 6, 7, 8], user: "cli" });
    expect(report.loras).toHaveLength(2);
    expect(report.files).toHaveLength(5);
    expect(report.files.every((file: string) => file.startsWith(out) && existsSync(file))).toBe(true);
    const usage: string[] = [];
    expect(await main(["imagine", "x", "--fusion", "magic"], { stdout: () => undefined, stderr: (line) => usage.push(line) })).toBe(2);
    expect(usage).toEqual(["--fusion must be one of none, direct, dare, klora, gated"]);
  }, 120_000);
});
