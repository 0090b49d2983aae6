// The host as its users meet it on an unlucky day: a worker that dies mid-job (the job starts again and the chat
// says why its progress went back to step 1), and a chat platform that cannot be reached at start (reported in
// one line and retried with backoff while the other chats serve).
import { mkdtemp } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { AdapterPortError, ChatAdapters } from "../src/bots/adapters.js";
import type { BotMessage } from "../src/bots/messages.js";
import type { ChatAdapter, ChatAdapterEnvironment, ChatAdapterFactory } from "../src/plugins.js";
import { fakeHost } from "../src/testing/fake-host.js";
import { freePort } from "../src/testing/free-port.js";

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  // Every cleanup runs even if one fails, so no process outlives the test.
  const outcomes = [];
  for (const cleanup of cleanups.splice(0).reverse()) outcomes.push(await cleanup().then(() => undefined, (error: unknown) => error));
  const failure = outcomes.find((outcome) => outcome !== undefined);
  if (failure) throw failure;
});

describe("a worker that dies mid-job", () => {
  it("is retried, and the chat says so under the progress until the grid arrives", async () => {
    const marker = join(await mkdtemp(join(tmpdir(), "autolora-crash-")), "crashed-once");
    const host = await fakeHost({ stepMs: 20, steps: 6, workerEnv: { FAKE_CRASH_AT_STEP: "3", FAKE_CRASH_MARKER: marker } });
    cleanups.push(() => host.stop());
    const shown: string[] = [];
    let final: BotMessage | undefined;
    const conversation = {
      answer: async (message: BotMessage) => {
        shown.push(message.text);
        return { edit: async (next: BotMessage) => { shown.push(next.text); final = next; } };
      },
    };
    await host.core.handleText("/imagine a red hexagon", host.core.requester({ adapter: "web", userId: "ada", name: "ada" }), conversation);
    const warned = shown.findIndex((text) => text.includes("⚠️ the GPU worker stopped mid-job"));
    expect(warned, shown.join("\n---\n")).toBeGreaterThan(0);
    // The progress after the restart keeps the warning beside the step count.
    expect(shown.slice(warned).some((text) => /⚠️ the GPU worker stopped mid-job[^\n]*\n🎨 step 1 of 6/.test(text))).toBe(true);
    expect(final?.buttons?.flat().map((button) => button.label)).toContain("U1");
  }, 60_000);
});

/** An adapter factory whose adapters fail to start `failures` times (with `error`), then run. */
function flaky(name: string, failures: number, error: () => Error) {
  const attempts: number[] = [];
  const factory: ChatAdapterFactory = {
    name,
    create: () => {
      const adapter: ChatAdapter & { running: boolean } = {
        name, running: false,
        start: async () => {
          attempts.push(Date.now());
          if (attempts.length <= failures) throw error();
          adapter.running = true;
        },
        stop: async () => { adapter.running = false; },
      };
      return adapter;
    },
  };
  return { factory, attempts };
}

const withCode = (message: string, code: string) => Object.assign(new Error(message), { code });
const environment = {} as ChatAdapterEnvironment;

describe("chat adapters at start", () => {
  it("keeps the others serving while one that cannot connect is retried with growing waits", async () => {
    const web = flaky("web", 0, () => new Error("never"));
    const discord = flaky("discord", 3, () => withCode("connect ECONNREFUSED 127.0.0.1:9", "ECONNREFUSED"));
    const log: string[] = [];
    const chats = new ChatAdapters([web.factory, discord.factory], environment, { log: (line) => log.push(line), backoffMs: 100 });
    cleanups.push(() => chats.stop());
    await chats.start();
    expect(chats.status()).toEqual([{ name: "web", state: "running" },
      { name: "discord", state: "retrying", error: "connect ECONNREFUSED 127.0.0.1:9" }]);
    expect(chats.running().map((adapter) => adapter.name)).toEqual(["web"]);
    for (let waited = 0; chats.status()[1]!.state !== "running" && waited < 10_000; waited += 50) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(chats.status()[1]).toEqual({ name: "discord", state: "running" });
    expect(log.filter((line) => line.includes("discord"))).toEqual([
      "[host] chat adapter discord could not start (connect ECONNREFUSED 127.0.0.1:9); retrying in 0.1 s",
      "[host] chat adapter discord could not start (connect ECONNREFUSED 127.0.0.1:9); retrying in 0.2 s",
      "[host] chat adapter discord could not start (connect ECONNREFUSED 127.0.0.1:9); retrying in 0.4 s",
      "[host] chat adapter discord connected after 3 failed attempt(s)",
    ]);
    const gaps = discord.attempts.slice(1).map((at, index) => at - discord.attempts[index]!);
    expect(gaps[0]).toBeGreaterThanOrEqual(90);
    expect(gaps[1]).toBeGreaterThanOrEqual(190); // doubled
    expect(gaps[2]).toBeGreaterThanOrEqual(390);
  });

  it("leaves off an adapter whose token is refused, and stops retrying when stopped", async () => {
    const slack = flaky("slack", 99, () => withCode("An invalid token was provided.", "TokenInvalid"));
    const discord = flaky("discord", 99, () => new Error("getaddrinfo ENOTFOUND discord.com"));
    const web = flaky("web", 0, () => new Error("never"));
    const log: string[] = [];
    const chats = new ChatAdapters([web.factory, slack.factory, discord.factory], environment, { log: (line) => log.push(line), backoffMs: 50 });
    await chats.start();
    expect(chats.status().map((chat) => chat.state)).toEqual(["running", "failed", "retrying"]);
    expect(log).toContain("[host] chat adapter slack was refused (An invalid token was provided.); check its token. The other chats keep serving");
    await chats.stop();
    const tries = discord.attempts.length;
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(discord.attempts.length).toBe(tries);
    expect(slack.attempts.length).toBe(1);
  });

  it("refuses to start when a port is taken, naming it, and stops what had started", async () => {
    const web = flaky("web", 1, () => withCode("listen EADDRINUSE: address already in use 127.0.0.1:8787", "EADDRINUSE"));
    const other = flaky("other", 0, () => new Error("never"));
    const chats = new ChatAdapters([other.factory, web.factory], environment, { log: () => undefined });
    await expect(chats.start()).rejects.toThrow(AdapterPortError);
    expect(chats.status().map((chat) => chat.state)).toEqual(["stopped", "stopped"]);
  });

  it("refuses to start with no chat configured", async () => {
    const chats = new ChatAdapters([{ name: "discord", create: () => undefined }], environment, { log: () => undefined });
    await expect(chats.start()).rejects.toThrow("no chat adapter is enabled");
  });
});

describe("autolora serve with Discord unreachable at start", () => {
  it("serves the web chat at once and connects Discord once it can be reached", async () => {
    const { startServing } = await import("../src/cli/serve.js");
    const { startFakeDiscord } = await import("../src/testing/fake-discord.js");
    const worker = await remoteFakeWorker("serve-test-token");
    cleanups.push(worker.stop);
    // A port that refuses connections until the "network" comes back, then forwards to a fake Discord.
    const gate = await freePort();
    const log: string[] = [];
    const serving = await startServing({
      DISCORD_TOKEN: "fake-bot-token", AUTOLORA_DISCORD__API_URL: `http://127.0.0.1:${gate}/api`,
      AUTOLORA_WORKER_TOKEN: "serve-test-token", AUTOLORA_WORKERS__LOCAL: "[]", AUTOLORA_WORKERS__REMOTE: `["${worker.url}"]`,
      AUTOLORA_WEB__PORT: "0", AUTOLORA_DATA_DIR: await mkdtemp(join(tmpdir(), "autolora-serve-")), AUTOLORA_SEED_POOL_FROM_BUNDLE: "false",
    }, (line) => log.push(line), { backoffMs: 200 });
    cleanups.push(() => serving.stop());
    expect(serving.chats.status().map((chat) => [chat.name, chat.state])).toEqual([["web", "running"], ["discord", "retrying"]]);
    expect(log.some((line) => /^\[host\] chat adapter discord could not start \(.*ECONNREFUSED.*\); retrying in 0\.2 s$/.test(line)), log.join("\n")).toBe(true);
    const web = serving.chats.running()[0] as unknown as { url: string };
    expect((await fetch(web.url)).status).toBe(200);

    const fake = await startFakeDiscord({});
    cleanups.push(() => fake.close());
    const forward = await forwarder(gate, Number(new URL(fake.apiUrl).port));
    cleanups.push(() => new Promise((resolve) => forward.close(resolve)));
    for (let waited = 0; serving.chats.status()[1]!.state !== "running" && waited < 20_000; waited += 100) await new Promise((resolve) => setTimeout(resolve, 100));
    expect(serving.chats.status()[1]).toEqual({ name: "discord", state: "running" });
  }, 60_000);
});

/** The protocol fake started by hand, as a remote worker is: its URL, and how to stop it. */
async function remoteFakeWorker(token: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const { spawn } = await import("node:child_process");
  const child = spawn(process.execPath, [join(import.meta.dirname, "fixtures", "fake-worker.mjs")], {
    env: { ...process.env, AUTOLORA_WORKER_TOKEN: token, FAKE_EMBED_DIM: "384" }, stdio: ["ignore", "pipe", "inherit"],
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.on("data", (chunk: Buffer) => {
      const match = /"port":(\d+)/.exec(chunk.toString());
      if (match) resolve(Number(match[1]));
    });
    child.once("exit", (code) => reject(new Error(`the fake worker exited with ${code}`)));
  });
  return {
    url: `http://127.0.0.1:${port}`,
    stop: async () => {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill();
      await exited;
    },
  };
}


/** Listen on `port` and pipe every connection to `target` (both on 127.0.0.1). */
async function forwarder(port: number, target: number): Promise<Server> {
  const { connect } = await import("node:net");
  const server = createServer((socket) => {
    const upstream = connect(target, "127.0.0.1");
    socket.pipe(upstream).pipe(socket);
    socket.on("error", () => upstream.destroy());
    upstream.on("error", () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return server;
}
