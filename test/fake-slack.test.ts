// The fake Slack against a real, unmodified Bolt App: signed requests into Bolt's HTTP receiver are acked and
// reach the listeners, forged and stale ones get 401, and what the listeners send through the Web API,
// files.uploadV2 and respond() lands in the fake's records; Socket Mode envelopes are acked over the WebSocket.
import type { AddressInfo } from "node:net";
import { App, LogLevel, type AllMiddlewareArgs, type BlockAction, type ButtonAction, type SlackCommandMiddlewareArgs } from "@slack/bolt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startFakeSlack, type FakeSlack } from "../src/testing/fake-slack.js";

const signingSecret = "test-signing-secret";
const botToken = "xoxb-test-bot-token";
const appToken = "xapp-test-app-token";
const user = "U0TESTUSER";
const channel = "C0TESTCHAN";
const image = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 1, 2, 250, 251, 252]);

/** What a /imagine-like command does: ack first, then post, edit, upload into the thread and respond. */
async function imagine({ ack, command, client, respond }: SlackCommandMiddlewareArgs & AllMiddlewareArgs): Promise<void> {
  await ack();
  const posted = await client.chat.postMessage({
    channel: command.channel_id,
    text: `working on ${command.text}`,
    blocks: [
      { type: "section", text: { type: "mrkdwn", text: `working on *${command.text}*` } },
      { type: "actions", block_id: "controls", elements: [{ type: "button", action_id: "retry", text: { type: "plain_text", text: "Retry" }, value: "again" }] },
    ],
  });
  await client.chat.update({ channel: command.channel_id, ts: posted.ts!, text: "done" });
  await client.files.uploadV2({ channel_id: command.channel_id, thread_ts: posted.ts!, file: image, filename: "grid.png", initial_comment: "the grid" });
  await respond({ text: `queued ${command.text}` });
}

describe("fake Slack with Bolt's HTTP receiver", () => {
  let fake: FakeSlack;
  let app: App;
  let url: string;
  let commandRuns = 0;
  const reactions: Array<Record<string, unknown>> = [];
  const clicks: Array<{ blockId: string; value: string | undefined }> = [];

  beforeAll(async () => {
    // Each Web API answer takes 20 ms, so a handler that makes five calls clearly outlasts its ack.
    fake = await startFakeSlack({ signingSecret, botToken, apiDelayMs: 20 });
    app = new App({
      token: botToken,
      signingSecret,
      logLevel: LogLevel.ERROR,
      // Without retries a wrong answer from the fake fails the test instead of being retried for half an hour.
      clientOptions: { slackApiUrl: fake.apiUrl, retryConfig: { retries: 0 } },
    });
    app.command("/imagine", async (args) => {
      commandRuns += 1;
      await imagine(args);
    });
    app.event("reaction_added", async ({ event }) => {
      reactions.push({ ...event });
    });
    app.action<BlockAction<ButtonAction>>("retry", async ({ ack, action, respond }) => {
      await ack();
      clicks.push({ blockId: action.block_id, value: action.value });
      await respond({ replace_original: true, text: "retrying" });
    });
    app.options("lora_pick", async ({ ack, options }) => {
      await ack({ options: [{ text: { type: "plain_text", text: `${options.value} lora` }, value: "lora-1" }] });
    });
    const server = await app.start({ port: 0, host: "127.0.0.1" });
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/slack/events`;
  });

  afterAll(async () => {
    await app?.stop();
    await fake?.close();
  });

  it("answers Bolt's auth.test at start", async () => {
    const call = await fake.waitForCall("auth.test");
    expect(call.token).toBe(botToken);
  });

  it("acks a signed slash command at once, then records the posts, the 3-step upload and respond()", async () => {
    const result = await fake.slashCommand(url, { command: "/imagine", text: "a red fox", userId: user, channelId: channel });
    expect(result.status).toBe(200);
    expect(result.body).toBe("");
    expect(result.ms).toBeLessThan(100);

    const response = await fake.waitForResponse((candidate) => candidate.url === result.responseUrl);
    expect(response.body).toEqual({ text: "queued a red fox" });
    expect(result.at + result.ms).toBeLessThan(response.at);

    const post = await fake.waitForCall("chat.postMessage");
    expect(post.token).toBe(botToken);
    expect(post.args).toMatchObject({ channel, text: "working on a red fox" });
    expect(post.args.blocks).toHaveLength(2);
    const update = await fake.waitForCall("chat.update");
    const message = fake.messages.get(update.args.ts as string)!;
    expect(message).toMatchObject({ channel, text: "done", edits: 1 });

    const getUrl = await fake.waitForCall("files.getUploadURLExternal");
    expect(getUrl.args).toMatchObject({ filename: "grid.png", length: String(image.length) });
    const complete = await fake.waitForCall("files.completeUploadExternal");
    expect(complete.args).toMatchObject({ channel_id: channel, initial_comment: "the grid", thread_ts: message.ts });
    const [file] = fake.files.values();
    expect(file).toMatchObject({ filename: "grid.png", title: "grid.png", channel, thread_ts: message.ts, completed: true });
    expect(file!.data.equals(image)).toBe(true);
    const share = [...fake.messages.values()].find((candidate) => candidate.files.includes(file!.id));
    expect(share).toMatchObject({ channel, text: "the grid", thread_ts: message.ts });
  });

  it("delivers a signed reaction_added event", async () => {
    const ts = [...fake.messages.keys()][0]!;
    const result = await fake.event(url, { type: "reaction_added", user, reaction: "thumbsup", item: { type: "message", channel, ts }, item_user: fake.botUserId });
    expect(result.status).toBe(200);
    await expect.poll(() => reactions).toHaveLength(1);
    expect(reactions[0]).toMatchObject({ reaction: "thumbsup", item: { ts } });
  });

  it("delivers a button click with its block, and replace_original edits the message", async () => {
    const message = [...fake.messages.values()].find((candidate) => candidate.blocks.length > 0)!;
    const result = await fake.blockAction(url, { actionId: "retry", value: "again", userId: user, channelId: channel, messageTs: message.ts });
    expect(result.status).toBe(200);
    await fake.waitForResponse((response) => response.url === result.responseUrl);
    expect(clicks).toEqual([{ blockId: "controls", value: "again" }]);
    expect(message).toMatchObject({ text: "retrying", edits: 2 });
  });

  it("returns an external_select's options in the HTTP answer", async () => {
    const result = await fake.blockSuggestion(url, { actionId: "lora_pick", value: "fox", userId: user });
    expect(result.status).toBe(200);
    expect(JSON.parse(result.body)).toEqual({ options: [{ text: { type: "plain_text", text: "fox lora" }, value: "lora-1" }] });
  });

  it("gets 401 for a forged signature or a stale timestamp, and the handler never runs", async () => {
    const runs = commandRuns;
    const calls = fake.calls.length;
    const input = { command: "/imagine", text: "forged", userId: user, channelId: channel };
    expect((await fake.slashCommand(url, input, { secret: "not-the-secret" })).status).toBe(401);
    expect((await fake.slashCommand(url, input, { signature: "v0=0000" })).status).toBe(401);
    expect((await fake.slashCommand(url, input, { timestamp: Math.floor(Date.now() / 1000) - 6 * 60 })).status).toBe(401);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(commandRuns).toBe(runs);
    expect(fake.calls.length).toBe(calls);
  });

  it("answers the Web API's errors the way Slack does", async () => {
    await expect(app.client.chat.update({ channel, ts: "1.000000", text: "x" })).rejects.toMatchObject({ data: { ok: false, error: "message_not_found" } });
    await expect(app.client.auth.test({ token: "xoxb-wrong" })).rejects.toMatchObject({ data: { error: "invalid_auth" } });
  });
});

describe("fake Slack with Bolt's Socket Mode receiver", () => {
  let fake: FakeSlack;
  let app: App;

  beforeAll(async () => {
    fake = await startFakeSlack({ signingSecret, botToken, appToken });
    app = new App({
      token: botToken,
      appToken,
      socketMode: true,
      logLevel: LogLevel.ERROR,
      clientOptions: { slackApiUrl: fake.apiUrl, retryConfig: { retries: 0 } },
    });
    app.command("/imagine", async ({ ack, command, respond }) => {
      await ack();
      await respond({ response_type: "in_channel", text: `queued ${command.text}` });
    });
    app.options("lora_pick", async ({ ack }) => {
      await ack({ options: [{ text: { type: "plain_text", text: "fox lora" }, value: "lora-1" }] });
    });
    await app.start();
  });

  afterAll(async () => {
    await app?.stop();
    await fake?.close();
  });

  it("opens the connection with the app-level token", async () => {
    const call = await fake.waitForCall("apps.connections.open");
    expect(call.token).toBe(appToken);
  });

  it("acks a slash command envelope, and respond() posts in the channel", async () => {
    const payload = fake.payloads.slashCommand({ command: "/imagine", text: "a fox", userId: user, channelId: channel });
    const { ackMs, ack } = await fake.socketSend("slash_commands", payload);
    expect(ack).toEqual({});
    expect(ackMs).toBeLessThan(100);
    await fake.waitForResponse((response) => response.url === payload.response_url);
    expect([...fake.messages.values()]).toMatchObject([{ channel, text: "queued a fox" }]);
  });

  it("carries an options answer in the ack", async () => {
    const { ack } = await fake.socketSend("interactive", fake.payloads.blockSuggestion({ actionId: "lora_pick", value: "fox", userId: user }));
    expect(ack).toEqual({ options: [{ text: { type: "plain_text", text: "fox lora" }, value: "lora-1" }] });
  });
});
