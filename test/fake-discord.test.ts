// The fake Discord driven by a real discord.js Client: login, slash commands with options, a deferred reply edited
// with a file and a button, button updates and follow-ups, channel messages, a reaction on a message the client never
// saw, command registration, and an expired interaction token.
import { once } from "node:events";
import {
  ActionRowBuilder, ApplicationCommandOptionType, ButtonBuilder, ButtonStyle, Client, Events, GatewayIntentBits,
  InteractionResponseType, MessageFlags, Partials, Routes,
  type Interaction, type MessageReaction, type User,
} from "discord.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startFakeDiscord, type FakeDiscord } from "../src/testing/fake-discord.js";

const ALICE = "200000000000000001";
const BOB = "200000000000000002";
/** RIFF/WEBP magic, enough for @discordjs/rest to label the part image/webp. */
const WEBP = Buffer.concat([Buffer.from("RIFF"), Buffer.from([20, 0, 0, 0]), Buffer.from("WEBPVP8L"), Buffer.alloc(12, 7)]);

let fake: FakeDiscord;
let client: Client;

beforeAll(async () => {
  fake = await startFakeDiscord();
  client = new Client({
    intents: [GatewayIntentBits.Guilds, GatewayIntentBits.GuildMessages, GatewayIntentBits.GuildMessageReactions],
    partials: [Partials.Message, Partials.Channel, Partials.Reaction],
    rest: { api: fake.apiUrl },
  });
  const ready = once(client, Events.ClientReady);
  await client.login("fake-token");
  await ready;
});

afterAll(async () => {
  await client?.destroy();
  await fake?.close();
});

async function nextInteraction(): Promise<Interaction> {
  const [interaction] = await once(client, Events.InteractionCreate);
  return interaction as Interaction;
}

function imagineButtons(): ActionRowBuilder<ButtonBuilder> {
  return new ActionRowBuilder<ButtonBuilder>().addComponents(
    new ButtonBuilder().setCustomId("rate:up").setLabel("👍").setStyle(ButtonStyle.Secondary),
  );
}

describe("fake Discord with discord.js", () => {
  let imageMessageId: string;

  it("logs the client in: its user, application, guild and text channel come from READY and GUILD_CREATE", async () => {
    await fake.ready();
    expect(client.user?.id).toBe(fake.botUserId);
    expect(client.application?.id).toBe(fake.applicationId);
    const guild = client.guilds.cache.get(fake.guildId);
    expect(guild?.available).toBe(true);
    expect(guild?.channels.cache.get(fake.channelId)?.isTextBased()).toBe(true);
    expect(guild?.members.me?.id).toBe(fake.botUserId);
    expect(fake.requests.map((request) => request.path)).toContain("/gateway/bot");
  });

  it("delivers a slash command with its options; deferReply then editReply with a file and a button", async () => {
    const arriving = nextInteraction();
    const { token } = fake.slashCommand({
      name: "imagine",
      userId: ALICE,
      username: "alice",
      options: [
        { name: "prompt", type: ApplicationCommandOptionType.String, value: "a red hexagon" },
        { name: "seed", type: ApplicationCommandOptionType.Integer, value: 7 },
      ],
    });
    const interaction = await arriving;
    if (!interaction.isChatInputCommand()) throw new Error(`expected a chat-input command, got type ${interaction.type}`);
    expect(interaction.commandName).toBe("imagine");
    expect(interaction.options.getString("prompt")).toBe("a red hexagon");
    expect(interaction.options.getInteger("seed")).toBe(7);
    expect(interaction.user.username).toBe("alice");
    expect(interaction.inGuild() && interaction.channelId).toBe(fake.channelId);

    await interaction.deferReply();
    const reply = await interaction.editReply({ content: "here it is", files: [{ attachment: WEBP, name: "grid.webp" }], components: [imagineButtons()] });

    const callback = await fake.waitForRequest((request) => request.path === `/interactions/${interaction.id}/${token}/callback`);
    expect(callback.body).toMatchObject({ type: InteractionResponseType.DeferredChannelMessageWithSource });
    const edit = await fake.waitForRequest((request) => request.method === "PATCH" && request.path === `/webhooks/${fake.applicationId}/${token}/messages/@original`);
    expect(edit.files).toEqual([{ field: "files[0]", name: "grid.webp", contentType: "image/webp", data: WEBP }]);

    const stored = fake.messages.get(reply.id);
    expect(stored).toMatchObject({ content: "here it is", interaction_token: token, edits: 1, flags: 0 });
    expect(stored?.attachments).toMatchObject([{ filename: "grid.webp", size: WEBP.length, content_type: "image/webp", data: WEBP }]);
    expect(stored?.components).toMatchObject([{ components: [{ custom_id: "rate:up" }] }]);
    const attachment = reply.attachments.first();
    expect(attachment?.name).toBe("grid.webp");
    expect(Buffer.from(await (await fetch(attachment!.url)).arrayBuffer())).toEqual(WEBP);
    imageMessageId = reply.id;
  });

  it("delivers a button click on that message; update() rewrites it and followUp() adds a message", async () => {
    const arriving = nextInteraction();
    const { token } = fake.button({ customId: "rate:up", messageId: imageMessageId, userId: BOB });
    const interaction = await arriving;
    if (!interaction.isButton()) throw new Error(`expected a button, got type ${interaction.type}`);
    expect(interaction.customId).toBe("rate:up");
    expect(interaction.message.id).toBe(imageMessageId);
    expect(interaction.user.id).toBe(BOB);

    await interaction.update({ content: "rated 👍", components: [] });
    expect(fake.messages.get(imageMessageId)).toMatchObject({ content: "rated 👍", components: [], edits: 2 });
    expect(fake.messages.get(imageMessageId)?.attachments).toHaveLength(1);

    const followUp = await interaction.followUp({ content: "thanks!" });
    expect(fake.messages.get(followUp.id)).toMatchObject({ content: "thanks!", interaction_token: token });
  });

  it("answers a button with reply(), and with_response returns the created message", async () => {
    const arriving = nextInteraction();
    fake.button({ customId: "rate:down", messageId: imageMessageId, userId: BOB });
    const interaction = await arriving;
    if (!interaction.isButton()) throw new Error("expected a button");
    const response = await interaction.reply({ content: "noted", flags: MessageFlags.Ephemeral, withResponse: true });
    const messageId = response.resource?.message?.id;
    expect(messageId).toBeDefined();
    expect(fake.messages.get(messageId!)).toMatchObject({ content: "noted", flags: MessageFlags.Ephemeral });
    expect(fake.messages.get(imageMessageId)?.content).toBe("rated 👍");
  });

  it("delivers autocomplete and records the choices", async () => {
    const arriving = nextInteraction();
    const { token } = fake.autocomplete({ name: "imagine", userId: ALICE, options: [{ name: "prompt", type: ApplicationCommandOptionType.String, value: "hex", focused: true }] });
    const interaction = await arriving;
    if (!interaction.isAutocomplete()) throw new Error("expected autocomplete");
    expect(interaction.options.getFocused()).toBe("hex");
    await interaction.respond([{ name: "hexagon", value: "hexagon" }]);
    const callback = await fake.waitForRequest((request) => request.path.includes(token));
    expect(callback.body).toEqual({ type: InteractionResponseType.ApplicationCommandAutocompleteResult, data: { choices: [{ name: "hexagon", value: "hexagon" }] } });
  });

  it("sends, edits and deletes channel messages", async () => {
    const channel = await client.channels.fetch(fake.channelId);
    if (!channel?.isSendable()) throw new Error("the channel should be sendable");
    const message = await channel.send({ content: "fallback", files: [{ attachment: WEBP, name: "grid.webp" }] });
    expect(fake.messages.get(message.id)).toMatchObject({ channel_id: fake.channelId, content: "fallback", attachments: [{ filename: "grid.webp", data: WEBP }] });
    await message.edit({ content: "fallback, edited" });
    expect(fake.messages.get(message.id)).toMatchObject({ content: "fallback, edited", edits: 1 });
    expect(fake.messages.get(message.id)?.attachments).toHaveLength(1);
    await message.delete();
    expect(fake.messages.get(message.id)?.deleted).toBe(true);
  });

  it("emits messageReactionAdd, as a partial, for a message the client never saw", async () => {
    const unseen = "300000000000000001";
    const arriving = once(client, Events.MessageReactionAdd);
    fake.react({ messageId: unseen, userId: ALICE, emoji: "👍" });
    const [reaction, user] = (await arriving) as [MessageReaction, User];
    expect(reaction.partial).toBe(true);
    expect(reaction.message.partial).toBe(true);
    expect(reaction.message.id).toBe(unseen);
    expect(reaction.emoji.name).toBe("👍");
    expect(user.id).toBe(ALICE);

    const removing = once(client, Events.MessageReactionRemove);
    fake.react({ messageId: unseen, userId: ALICE, emoji: "👍", remove: true });
    const [removed] = (await removing) as [MessageReaction, User];
    expect(removed.emoji.name).toBe("👍");
  });

  it("records bulk command registration, and later interactions carry the registered command id", async () => {
    const registered = await client.application!.commands.set([
      { name: "imagine", description: "draw it", options: [{ type: ApplicationCommandOptionType.String, name: "prompt", description: "what to draw", required: true }] },
      { name: "help", description: "the commands" },
    ], fake.guildId);
    const stored = fake.commands.guild.get(fake.guildId) ?? [];
    expect(stored.map((command) => command.name)).toEqual(["imagine", "help"]);
    expect([...registered.keys()]).toEqual(stored.map((command) => command.id));
    expect(fake.requests.some((request) => request.method === "PUT" && request.path === `/applications/${fake.applicationId}/guilds/${fake.guildId}/commands`)).toBe(true);

    const arriving = nextInteraction();
    fake.slashCommand({ name: "help", userId: ALICE });
    const interaction = await arriving;
    expect(interaction.isChatInputCommand() && interaction.commandId).toBe(stored[1]?.id);
  });

  it("rejects editReply on an expired token with 401 Invalid Webhook Token; channel messages still work", async () => {
    const arriving = nextInteraction();
    const { token } = fake.slashCommand({ name: "imagine", userId: ALICE, options: [{ name: "prompt", type: ApplicationCommandOptionType.String, value: "slow" }] });
    const interaction = await arriving;
    if (!interaction.isChatInputCommand()) throw new Error("expected a chat-input command");
    await interaction.deferReply();
    fake.expireToken(token);
    await expect(interaction.editReply("too late")).rejects.toMatchObject({ status: 401, code: 50027 });
    const channel = await client.channels.fetch(fake.channelId);
    if (!channel?.isSendable()) throw new Error("the channel should be sendable");
    const fallback = await channel.send("here it is anyway");
    expect(fake.messages.get(fallback.id)?.content).toBe("here it is anyway");
  });

  it("answers unknown routes and unknown tokens as Discord does, and records them", async () => {
    await expect(client.rest.get(Routes.guildBans(fake.guildId))).rejects.toMatchObject({ status: 404, code: 0 });
    expect(fake.requests.some((request) => request.path === `/guilds/${fake.guildId}/bans`)).toBe(true);
    await expect(client.rest.patch(Routes.webhookMessage(fake.applicationId, "no-such-token"), { auth: false, body: { content: "x" } }))
      .rejects.toMatchObject({ status: 404, code: 10015 });
  });
});
