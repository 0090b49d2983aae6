// The adapter contract's harness for Discord: the real discord.js Client inside DiscordAdapter, logged in to a
// local fake Discord. Users act through gateway dispatches (slash commands, buttons, reactions) and the posts
// are the messages the fake holds. The admin is admin by role, not by user id.
import { ApplicationCommandOptionType } from "discord.js";
import { optionsOf, parseCommandText } from "../../src/bots/commands.js";
import { DiscordAdapter } from "../../src/bots/discord/adapter.js";
import { startFakeDiscord, type FakeDiscord } from "../../src/testing/fake-discord.js";
import type { FakeHost, Harness, Post, User } from "./adapter-contract.js";

export const DISCORD_ADMIN_ROLE = "100000000000000777";
const USERS: Record<User, { userId: string; username: string; roles: string[] }> = {
  alice: { userId: "100000000000000101", username: "alice", roles: [] },
  bob: { userId: "100000000000000102", username: "bob", roles: [] },
  admin: { userId: "100000000000000103", username: "root", roles: [DISCORD_ADMIN_ROLE] },
};

/** A typed line as the options a Discord user would fill in the command picker. */
export function discordOptions(line: string, host: FakeHost): { name: string; options: unknown[] } {
  const parsed = parseCommandText(line, host.context.commands);
  const specs = optionsOf(parsed.command, parsed.subcommand);
  const options = Object.entries(parsed.options).map(([name, value]) => {
    const integer = specs.find((spec) => spec.name === name)?.type === "integer";
    return { name, type: integer ? ApplicationCommandOptionType.Integer : ApplicationCommandOptionType.String, value: integer ? Number(value) : value };
  });
  return {
    name: parsed.command.name,
    options: parsed.subcommand ? [{ name: parsed.subcommand, type: ApplicationCommandOptionType.Subcommand, options }] : options,
  };
}

export async function discordHarness(host: FakeHost, tokenLifetimeMs?: number): Promise<{ harness: Harness; fake: FakeDiscord; adapter: DiscordAdapter; stop: () => Promise<void> }> {
  const fake = await startFakeDiscord({ roles: [{ id: DISCORD_ADMIN_ROLE, name: "bot admins" }] });
  const adapter = new DiscordAdapter({
    token: "fake-bot-token", core: host.core, stateDir: host.data, apiUrl: fake.apiUrl, guildId: fake.guildId, tokenLifetimeMs,
  });
  await adapter.start();
  const harness: Harness = {
    async command(user, line) {
      const sent = performance.now();
      const { id, token } = fake.slashCommand({ ...USERS[user], ...discordOptions(line, host) });
      const ack = await fake.waitForRequest((request) => request.path === `/interactions/${id}/${token}/callback`, 3000);
      return { ackMs: ack.at - sent };
    },
    async press(user, post, label) {
      const button = post.buttons.find((entry) => entry.label === label)!;
      fake.button({ ...USERS[user], customId: button.id, messageId: post.ref });
    },
    async react(user, post, emoji, removed) {
      fake.react({ messageId: post.ref, userId: USERS[user].userId, emoji, remove: removed });
    },
    async posts() {
      return [...fake.messages.values()].map((message): Post => ({
        ref: message.id, text: message.content,
        buttons: (message.components as Array<{ components?: Array<{ custom_id?: string; label?: string }> }>)
          .flatMap((row) => row.components ?? []).map((button) => ({ id: button.custom_id ?? "", label: button.label ?? "" })),
        image: message.attachments[0]?.data, ephemeral: (message.flags & 64) !== 0, deleted: message.deleted === true,
        history: fake.requests.filter((request) => request.method === "PATCH" && (request.path.endsWith(`/messages/${message.id}`)
          || (message.interaction_token !== undefined && request.path.endsWith(`${message.interaction_token}/messages/@original`))))
          .map((request) => String((request.body as { content?: string }).content ?? "")),
      }));
    },
    idOf: (user) => `discord:${USERS[user].userId}`,
  };
  return {
    harness, fake, adapter,
    stop: async () => {
      await adapter.stop();
      await fake.close();
    },
  };
}
