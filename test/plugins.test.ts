// Plugins: an external module named in the config adds a command that every chat then offers, and a
// post-processor the pipeline applies; a plugin that cannot load or set up is named in the error.
import { join } from "node:path";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { CommandRegistry } from "../src/bots/commands.js";
import { ChatCore, type Conversation } from "../src/bots/core.js";
import { builtinPlugin } from "../src/builtins.js";
import { loadConfig } from "../src/config/load.js";
import { PluginRegistry } from "../src/plugins.js";
import type { CommandContext } from "../src/bots/commands.js";

const fixtures = join(import.meta.dirname, "fixtures", "plugins");

function collect() {
  const said: string[] = [];
  const conversation: Conversation = {
    answer: async (message) => {
      said.push(message.error ? `error: ${message.text}` : message.text);
      return { edit: async (next) => void said.push(next.text) };
    },
  };
  return { said, conversation };
}

describe("plugins", () => {
  it("loads a local plugin from the config: its command joins the built-ins and its post-processor runs", async () => {
    const { config } = loadConfig({ AUTOLORA_PLUGINS: '["./echo-plugin.mjs"]' });
    const log: string[] = [];
    const plugins = new PluginRegistry(config, (line) => log.push(line));
    await plugins.use(builtinPlugin);
    await plugins.load(config.plugins, fixtures);
    expect(plugins.loaded).toEqual(["builtin", "echo"]);
    expect(log).toEqual(["[echo] adding /echo"]);
    expect(plugins.chatAdapters.map((adapter) => adapter.name)).toEqual(["web", "discord", "slack"]);
    const commands = new CommandRegistry();
    for (const command of plugins.commands) commands.add(command);
    const core = new ChatCore({ commands, chat: { admins: [], reactions: { "👍": 1 }, perMinute: 0, perDay: 0, maxPromptChars: 100, progressIntervalMs: 0 } } as unknown as CommandContext);
    const { said, conversation } = collect();
    const ada = core.requester({ adapter: "web", userId: "1", name: "ada" });
    await core.handleText("/echo hello there", ada, conversation);
    await core.handleText("/help", ada, conversation);
    expect(said[0]).toBe("ada said: hello there");
    expect(said[1]).toContain("/echo text:…: Says it back");
    expect(said[1]).toContain("/imagine prompt:…");
    expect(said[1]).not.toContain("/lora add"); // admin-only commands are not listed for others
    expect(said[1]).toContain("/lora info");

    const red = await sharp({ create: { width: 2, height: 2, channels: 3, background: "#ff0000" } }).png().toBuffer();
    const inverted = await plugins.postProcessors[0]!.run(red, { prompt: "", seeds: [], loras: [], fusion: "none", model_version: "", gate_version: null });
    expect([...(await sharp(inverted).raw().toBuffer()).subarray(0, 3)]).toEqual([0, 255, 255]);
  });

  it("names the plugin that cannot load, has no Plugin export, or fails to set up", async () => {
    const { config } = loadConfig({});
    const plugins = new PluginRegistry(config, () => undefined);
    await expect(plugins.load(["./missing.mjs"], fixtures)).rejects.toThrow(/^cannot load plugin \.\/missing\.mjs: /);
    await expect(plugins.load(["./broken-plugin.mjs"], fixtures)).rejects.toThrow("plugin ./broken-plugin.mjs failed to set up: missing API key");
    await expect(plugins.load(["node:path"], fixtures)).rejects.toThrow(/plugin node:path must export \{ name: string, setup\(api\) \}/);
    await expect(plugins.load(["autolora-no-such-package"], fixtures)).rejects.toThrow(/cannot load plugin autolora-no-such-package/);
  });

  it("refuses a command that clashes with one already registered", () => {
    const commands = new CommandRegistry();
    commands.add({ name: "imagine", description: "draw", run: async () => undefined });
    expect(() => commands.add({ name: "imagine", description: "draw", run: async () => undefined })).toThrow("already registered");
    expect(() => commands.add({ name: "/imagine", description: "draw", run: async () => undefined })).toThrow(/without the slash/);
    expect(() => commands.add({ name: "draw", description: "", run: async () => undefined })).toThrow(/needs a description/);
  });
});
