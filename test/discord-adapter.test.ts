// Discord as Discord does it, with discord.js unmodified against the local fake (REST under rest.api, gateway from
// GET /gateway/bot): the whole /imagine round trip on the wire, commands registered once per change, a job that
// outlives its interaction token finishing in the channel, autocomplete over a pool far beyond 25 LoRAs.
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiscordAdapter } from "../src/bots/discord/adapter.js";
import { fakeHost } from "../src/testing/fake-host.js";
import { startFakeDiscord, type RecordedRequest } from "../src/testing/fake-discord.js";
import { discordHarness, discordOptions } from "./helpers/harness-discord.js";

let host: Awaited<ReturnType<typeof fakeHost>>;
beforeAll(async () => {
  host = await fakeHost({ stepMs: 30, steps: 8 });
}, 60_000);
afterAll(async () => host?.stop());

const ALICE = { userId: "100000000000000101", username: "alice" };
const callbackOf = (id: string, token: string) => (request: RecordedRequest) => request.path === `/interactions/${id}/${token}/callback`;

describe("the Discord adapter on the wire", () => {
  it("READY → /imagine → deferred reply → progress edits → grid with buttons → button → reaction rates it", async () => {
    const { fake, adapter, stop } = await discordHarness(host);
    try {
      expect(fake.requests[0]).toMatchObject({ method: "GET", path: "/gateway/bot" });
      expect(adapter.client.isReady()).toBe(true);
      const { id, token } = fake.slashCommand({ ...ALICE, ...discordOptions("/imagine a red hexagon with diagonal stripes", host) });
      const deferral = await fake.waitForRequest(callbackOf(id, token));
      expect(deferral.body).toEqual({ type: 5, data: { flags: 0 } }); // DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE, public
      // Edits of the deferred reply: @original first, then by its message id, all under the interaction's token.
      const reply = `/webhooks/${fake.applicationId}/${token}/messages/`;
      const final = await fake.waitForRequest((request) => request.method === "PATCH" && request.path.startsWith(reply)
        && JSON.stringify(request.body).includes("autolora:upscale"), 20_000);
      const edits = fake.requests.filter((request) => request.method === "PATCH" && request.path.startsWith(reply));
      expect(edits[0]!.path).toBe(`${reply}@original`);
      const texts = edits.map((edit) => (edit.body as { content: string }).content);
      expect(texts[0]).toMatch(/⏳ (queued|starting)/);
      expect(texts.some((text) => /step \d+ of \d+/.test(text)), JSON.stringify(texts)).toBe(true);
      expect(edits.some((edit) => edit.files.some((file) => file.name === "preview.png"))).toBe(true);
      expect(final.files.map((file) => file.name)).toEqual(["grid.webp"]);
      expect(final.files[0]!.data.subarray(8, 12).toString()).toBe("WEBP");
      const rows = (final.body as { components: Array<{ components: Array<{ custom_id: string; label: string }> }> }).components;
      expect(rows.map((row) => row.components.map((button) => button.label))).toEqual([
        ["U1", "U2", "U3", "U4", "🔄"], ["V1", "V2", "V3", "V4", "ℹ️"], ["👍", "👎", "⭐", "🗑"],
      ]);
      const generation = rows[0]!.components[0]!.custom_id.split(":")[2]!;
      expect(rows.flat().every((row) => row.components.every((button) => button.custom_id.includes(generation)))).toBe(true);

      const message = [...fake.messages.values()].find((entry) => entry.interaction_token === token)!;
      const press = fake.button({ ...ALICE, customId: rows[1]!.components[4]!.custom_id, messageId: message.id });
      expect((await fake.waitForRequest(callbackOf(press.id, press.token))).body).toEqual({ type: 5, data: { flags: 64 } });
      const info = await fake.waitForRequest((request) => request.method === "PATCH" && request.path.includes(press.token));
      expect((info.body as { content: string }).content).toMatch(/seeds: \d+/);

      fake.react({ messageId: message.id, userId: "100000000000000102", emoji: "⭐" });
      await expect.poll(() => host.generations.ratingsOf(generation), { timeout: 10_000 }).toEqual([{ user: "discord:100000000000000102", value: 2 }]);
    } finally {
      await stop();
    }
  }, 40_000);

  it("registers its commands once per change, in the configured guild", async () => {
    const fake = await startFakeDiscord();
    const stateDir = await mkdtemp(join(tmpdir(), "autolora-discord-"));
    const puts = () => fake.requests.filter((request) => request.method === "PUT").map((request) => request.path);
    try {
      for (let start = 0; start < 2; start++) {
        const adapter = new DiscordAdapter({ token: "t", core: host.core, stateDir, apiUrl: fake.apiUrl, guildId: fake.guildId });
        expect((await adapter.start()).registered).toBe(start === 0);
        await adapter.stop();
      }
      expect(puts()).toEqual([`/applications/${fake.applicationId}/guilds/${fake.guildId}/commands`]);
      const registered = fake.commands.guild.get(fake.guildId)!;
      expect(registered.map((command) => command.name)).toEqual(["imagine", "loras", "lora", "pool", "retrain", "help"]);
      const imagine = registered.find((command) => command.name === "imagine")!;
      expect(imagine.options?.map((option) => option.name)).toEqual(["prompt", "loras", "k", "fusion", "seed", "size"]);
      // Release: global commands are a change of scope, so they are registered (once) too.
      const global = new DiscordAdapter({ token: "t", core: host.core, stateDir, apiUrl: fake.apiUrl });
      expect((await global.start()).registered).toBe(true);
      await global.stop();
      expect(puts().at(-1)).toBe(`/applications/${fake.applicationId}/commands`);
    } finally {
      await fake.close();
    }
  }, 30_000);

  it("a job that outlives its interaction token finishes as a channel message", async () => {
    const { fake, stop } = await discordHarness(host);
    try {
      const { id, token } = fake.slashCommand({ ...ALICE, ...discordOptions("/imagine a star", host) });
      await fake.waitForRequest(callbackOf(id, token));
      fake.expireToken(token);
      const posted = await fake.waitForRequest((request) => request.method === "POST" && request.path === `/channels/${fake.channelId}/messages`, 10_000);
      expect((posted.body as { content: string }).content).toContain("a star");
      await expect.poll(() => [...fake.messages.values()].some((message) => message.channel_id === fake.channelId && !message.interaction_token
        && JSON.stringify(message.components).includes("autolora:upscale") && message.attachments.length === 1), { timeout: 20_000 }).toBe(true);
    } finally {
      await stop();
    }
  }, 40_000);

  it("autocompletes LoRA names from a pool of far more than 25", async () => {
    const [template] = await host.index.list({}, 1);
    const full = (await host.index.get(template!.id))!;
    await host.index.upsert(Array.from({ length: 60 }, (_, n) => ({
      ...full, id: (n + 10).toString(16).padStart(64, "a"), name: `watercolor style ${String(n).padStart(2, "0")}`,
    })));
    const { fake, stop } = await discordHarness(host);
    try {
      const ask = async (typed: string) => {
        const { id, token } = fake.autocomplete({
          ...ALICE, name: "imagine", options: [{ name: "prompt", type: 3, value: "a cat" }, { name: "loras", type: 3, value: typed, focused: true }],
        });
        const answer = await fake.waitForRequest(callbackOf(id, token));
        expect((answer.body as { type: number }).type).toBe(8);
        return (answer.body as { data: { choices: Array<{ name: string; value: string }> } }).data.choices;
      };
      expect(await ask("watercolor")).toHaveLength(25);
      expect((await ask("watercolor style 4")).map((choice) => choice.value)).toEqual(
        Array.from({ length: 10 }, (_, n) => `watercolor style 4${n}`));
      expect((await ask("hexagon shapes, watercolor style 07")).map((choice) => choice.value)).toEqual(["hexagon shapes, watercolor style 07"]);
    } finally {
      await stop();
      for (let n = 0; n < 60; n++) await host.index.remove((n + 10).toString(16).padStart(64, "a"));
    }
  }, 40_000);
});
