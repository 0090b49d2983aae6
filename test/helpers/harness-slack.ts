// The adapter contract's harness for Slack: the real Bolt App inside SlackAdapter, on its HTTP receiver,
// receiving slash commands, button clicks and events signed as Slack signs them, and calling a local fake Web
// API. Posts are the fake's channel messages (a finished grid is its uploaded file) and the ephemeral answers
// Bolt's respond() sent, in the order they appeared.
import { SlackAdapter } from "../../src/bots/slack/adapter.js";
import { DEFAULT_CHANNEL, startFakeSlack, type FakeSlack } from "../../src/testing/fake-slack.js";
import type { FakeHost, Harness, Post, User } from "./adapter-contract.js";

export const SLACK_SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5";
const USERS: Record<User, string> = { alice: "UALICE", bob: "UBOB", admin: "UADMIN" };
const REACTIONS: Record<string, string> = { "👍": "+1", "👎": "-1", "⭐": "star" };

export async function slackHarness(host: FakeHost): Promise<{ harness: Harness; fake: FakeSlack; adapter: SlackAdapter; url: string; stop: () => Promise<void> }> {
  const fake = await startFakeSlack({ signingSecret: SLACK_SIGNING_SECRET, botToken: "xoxb-fake" });
  const adapter = new SlackAdapter({
    core: host.core, botToken: "xoxb-fake", mode: "http", signingSecret: SLACK_SIGNING_SECRET,
    host: "127.0.0.1", port: 0, apiUrl: fake.apiUrl, retries: 0,
  });
  const { url } = await adapter.start();
  const channel = DEFAULT_CHANNEL.id;
  // Arrival order across channel messages and ephemeral responses, as the user saw them.
  const order: string[] = [];
  const refresh = () => {
    for (const ts of fake.messages.keys()) if (!order.includes(`message:${ts}`)) order.push(`message:${ts}`);
    fake.responses.forEach((_, index) => { if (!order.includes(`response:${index}`)) order.push(`response:${index}`); });
  };
  const harness: Harness = {
    async command(user, line) {
      const [command, ...words] = line.split(" ");
      const sent = await fake.slashCommand(url!, { command: command!, text: words.join(" "), userId: USERS[user], channelId: channel });
      if (sent.status !== 200) throw new Error(`Bolt answered ${sent.status}: ${sent.body}`);
      return { ackMs: sent.ms };
    },
    async press(user, post, label) {
      const button = post.buttons.find((entry) => entry.label === label)!;
      const sent = await fake.blockAction(url!, { actionId: button.id, value: button.id, userId: USERS[user], channelId: channel, messageTs: post.ref });
      if (sent.status !== 200) throw new Error(`Bolt answered ${sent.status}: ${sent.body}`);
    },
    async react(user, post, emoji, removed) {
      await fake.event(url!, {
        type: removed ? "reaction_removed" : "reaction_added", user: USERS[user], reaction: REACTIONS[emoji] ?? emoji,
        item: { type: "message", channel, ts: post.ref }, item_user: fake.botUserId, event_ts: `${Date.now() / 1000}`,
      });
    },
    async posts() {
      refresh();
      return order.map((entry): Post => {
        const [kind, key] = entry.split(":") as [string, string];
        if (kind === "response") {
          const body = fake.responses[Number(key)]!.body;
          return { ref: entry, text: String(body.text ?? ""), buttons: [], ephemeral: body.response_type === "ephemeral", deleted: false };
        }
        const message = fake.messages.get(key)!;
        const buttons = (message.blocks as Array<{ type: string; elements?: Array<{ action_id: string; text: { text: string } }> }>)
          .filter((block) => block.type === "actions").flatMap((block) => block.elements ?? [])
          .map((element) => ({ id: element.action_id, label: element.text.text }));
        const file = message.files[0] ? fake.files.get(message.files[0]) : undefined;
        return { ref: message.ts, text: message.text, buttons, image: file?.data, ephemeral: false, deleted: message.deleted === true, history: message.history };
      });
    },
    idOf: (user) => `slack:${USERS[user]}`,
  };
  return {
    harness, fake, adapter, url: url!,
    stop: async () => {
      await adapter.stop();
      await fake.close();
    },
  };
}
