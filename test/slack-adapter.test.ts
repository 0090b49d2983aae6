// Slack as Slack does it, with Bolt unmodified: correctly signed slash commands and events over HTTP, a local fake
// Web API behind slackApiUrl. Acked in time, the grid through the three steps of files.uploadV2, reaction_added
// rating it; a forged or stale signature refused with nothing run; Socket Mode answering the same commands.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SlackAdapter } from "../src/bots/slack/adapter.js";
import { fakeHost } from "../src/testing/fake-host.js";
import { DEFAULT_CHANNEL, startFakeSlack } from "../src/testing/fake-slack.js";
import { slackHarness } from "./helpers/harness-slack.js";

let host: Awaited<ReturnType<typeof fakeHost>>;
let slack: Awaited<ReturnType<typeof slackHarness>>;
beforeAll(async () => {
  host = await fakeHost({ stepMs: 5 });
  slack = await slackHarness(host);
}, 60_000);
afterAll(async () => {
  await slack?.stop();
  await host?.stop();
});

describe("the Slack adapter on the wire", () => {
  it("acks a signed /imagine at once, shows progress with chat.update and uploads the grid in three steps", async () => {
    const { fake, url } = slack;
    const sent = await fake.slashCommand(url, { command: "/imagine", text: "a red hexagon with diagonal stripes", userId: "UALICE" });
    expect(sent.status).toBe(200);
    expect(sent.ms).toBeLessThan(3000);
    const complete = await fake.waitForCall("files.completeUploadExternal", undefined, 20_000);
    const methods = fake.calls.map((call) => call.method);
    const asked = methods.indexOf("files.getUploadURLExternal");
    expect(asked).toBeGreaterThan(methods.indexOf("chat.postMessage"));
    expect(asked).toBeLessThan(methods.indexOf("files.completeUploadExternal"));
    expect(methods).toContain("chat.update");
    const [shared] = complete.args.files as Array<{ id: string }>;
    expect(complete.args.channel_id).toBe(DEFAULT_CHANNEL.id);
    const file = fake.files.get(shared!.id)!;
    expect(file.completed).toBe(true);
    const posted = await fake.waitForCall("chat.postMessage", (call) => JSON.stringify(call.args.blocks ?? "").includes("autolora:upscale"), 10_000);
    expect(fake.calls.indexOf(posted), "the buttons come under the image").toBeGreaterThan(fake.calls.indexOf(complete));
    const generation = JSON.stringify(posted.args.blocks).match(/autolora:upscale:([\w-]+)/)![1]!;
    const stored = (await host.generations.get(generation))!;
    expect(file.data.equals(await readFile(join(host.data, stored.images, "grid.webp")))).toBe(true);
    expect(String(complete.args.initial_comment)).toMatch(/\*a red hexagon with diagonal stripes\*\nLoRAs: hexagon shapes \(0\.\d\d\)/);

    const buttons = [...fake.messages.values()].find((message) => JSON.stringify(message.blocks).includes(`autolora:upscale:${generation}`))!;
    const reacted = await fake.event(url, {
      type: "reaction_added", user: "UBOB", reaction: "+1", item: { type: "message", channel: DEFAULT_CHANNEL.id, ts: buttons.ts },
      item_user: fake.botUserId, event_ts: `${Date.now() / 1000}`,
    });
    expect(reacted.status).toBe(200);
    await expect.poll(() => host.generations.ratingsOf(generation), { timeout: 10_000 }).toEqual([{ user: "slack:UBOB", value: 1 }]);
  }, 30_000);

  it("refuses a forged or stale signature with 401 and runs nothing", async () => {
    const { fake, url } = slack;
    const before = fake.calls.length;
    const forged = await fake.slashCommand(url, { command: "/imagine", text: "a forged star", userId: "UALICE" }, { secret: "not-the-secret" });
    const stale = await fake.slashCommand(url, { command: "/imagine", text: "a stale star", userId: "UALICE" },
      { timestamp: Math.floor(Date.now() / 1000) - 6 * 60 });
    const unsigned = await fake.post(url, "command=%2Fimagine&text=unsigned", "application/x-www-form-urlencoded", { signature: "" });
    expect([forged.status, stale.status, unsigned.status]).toEqual([401, 401, 401]);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(fake.calls.slice(before)).toEqual([]);
    expect(fake.responses.some((response) => JSON.stringify(response.body).includes("star"))).toBe(false);
  });

  it("works in Socket Mode too", async () => {
    const fake = await startFakeSlack({ signingSecret: "unused", botToken: "xoxb-socket", appToken: "xapp-socket" });
    const adapter = new SlackAdapter({ core: host.core, botToken: "xoxb-socket", appToken: "xapp-socket", mode: "socket", apiUrl: fake.apiUrl, retries: 0 });
    try {
      await adapter.start();
      const { ackMs } = await fake.socketSend("slash_commands", fake.payloads.slashCommand({ command: "/loras", text: "hexagon", userId: "UALICE" }));
      expect(ackMs).toBeLessThan(3000);
      const answer = await fake.waitForResponse((response) => String(response.body.text).includes("hexagon shapes"), 10_000);
      expect(answer.body.response_type).toBe("ephemeral");
    } finally {
      await adapter.stop();
      await fake.close();
    }
  }, 30_000);
});
