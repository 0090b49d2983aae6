// The bodies Slack's servers send an app: slash commands, event envelopes, block actions and block suggestions,
// filled in the way Slack fills them, with response_urls that point back at the fake. Typed by Bolt's own
// payload types, so a field Bolt relies on cannot go missing.
import { randomBytes } from "node:crypto";
import type { BlockAction, BlockSuggestion, ButtonAction, EnvelopedEvent, SlashCommand } from "@slack/bolt";
import { DEFAULT_CHANNEL, type FakeSlackWorkspace, type ResponseTarget } from "./fake-slack-workspace.js";

export interface SlashCommandInput {
  /** With the slash, e.g. "/imagine". */
  command: string;
  text: string;
  userId: string;
  /** Default: the fake's #general, DEFAULT_CHANNEL. */
  channelId?: string;
  /** Default: the name users.info gives this user. */
  userName?: string;
}

export interface BlockActionInput {
  actionId: string;
  value: string;
  userId: string;
  channelId: string;
  /** The message holding the button; when the fake stored it, its blocks give the block_id and button text. */
  messageTs: string;
}

export interface BlockSuggestionInput {
  actionId: string;
  /** What the user has typed so far. */
  value: string;
  userId: string;
  /** The message holding the external_select; without it the menu is in a modal. */
  channelId?: string;
  messageTs?: string;
}

/** The legacy verification token Slack still puts in every payload. */
const VERIFICATION_TOKEN = "fake-verification-token";

export class SlackPayloads {
  private sequence = 0;

  /** `responseUrl` registers a target with the fake's server and gives the URL to put in the payload. */
  constructor(
    private readonly workspace: FakeSlackWorkspace,
    private readonly responseUrl: (target: ResponseTarget) => string,
  ) {}

  slashCommand(input: SlashCommandInput): SlashCommand {
    const channelId = input.channelId ?? DEFAULT_CHANNEL.id;
    const { teamId, appId } = this.workspace.identity;
    return {
      token: VERIFICATION_TOKEN,
      team_id: teamId,
      team_domain: "fake-team",
      channel_id: channelId,
      channel_name: this.workspace.channelName(channelId),
      user_id: input.userId,
      user_name: input.userName ?? this.workspace.userName(input.userId),
      command: input.command,
      text: input.text,
      api_app_id: appId,
      is_enterprise_install: "false",
      response_url: this.responseUrl({ channel: channelId }),
      trigger_id: this.triggerId(),
    };
  }

  /** Wraps an event (reaction_added, app_mention, …) in the event_callback envelope; adds event_ts when absent. */
  event(event: Record<string, unknown>): EnvelopedEvent<Record<string, unknown>> {
    const { teamId, appId, botUserId } = this.workspace.identity;
    const now = Date.now() / 1000;
    return {
      token: VERIFICATION_TOKEN,
      team_id: teamId,
      context_team_id: teamId,
      api_app_id: appId,
      event: { event_ts: now.toFixed(6), ...event },
      type: "event_callback",
      event_id: `Ev${String(this.next()).padStart(9, "0")}`,
      event_time: Math.floor(now),
      authorizations: [{ enterprise_id: null, team_id: teamId, user_id: botUserId, is_bot: true, is_enterprise_install: false }],
      is_ext_shared_channel: false,
    };
  }

  /** A click on a button: Slack's block_actions payload, with the message it sits on when the fake has it. */
  blockAction(input: BlockActionInput): BlockAction<ButtonAction> {
    const { teamId, appId } = this.workspace.identity;
    const stored = this.workspace.messages.get(input.messageTs);
    const found = stored === undefined ? undefined : findElement(stored.blocks, input.actionId);
    const text = found?.element.text;
    return {
      type: "block_actions",
      user: { id: input.userId, username: this.workspace.userName(input.userId), name: this.workspace.userName(input.userId), team_id: teamId },
      api_app_id: appId,
      token: VERIFICATION_TOKEN,
      container: { type: "message", message_ts: input.messageTs, channel_id: input.channelId, is_ephemeral: false },
      trigger_id: this.triggerId(),
      team: { id: teamId, domain: "fake-team" },
      is_enterprise_install: false,
      channel: { id: input.channelId, name: this.workspace.channelName(input.channelId) },
      message: stored === undefined ? { type: "message", ts: input.messageTs, text: "" } : this.workspace.messageJson(stored),
      state: { values: {} },
      response_url: this.responseUrl({ channel: input.channelId, messageTs: input.messageTs }),
      actions: [
        {
          type: "button",
          action_id: input.actionId,
          block_id: found?.blockId ?? "fake-block",
          text: isPlainText(text) ? text : { type: "plain_text", text: input.value },
          value: input.value,
          action_ts: (Date.now() / 1000).toFixed(6),
        },
      ],
    };
  }

  /** An external_select asking for its options: Slack's block_suggestion payload. */
  blockSuggestion(input: BlockSuggestionInput): BlockSuggestion {
    const { teamId, appId } = this.workspace.identity;
    const stored = input.messageTs === undefined ? undefined : this.workspace.messages.get(input.messageTs);
    const found = stored === undefined ? undefined : findElement(stored.blocks, input.actionId);
    const inMessage = input.channelId !== undefined && input.messageTs !== undefined;
    return {
      type: "block_suggestion",
      user: { id: input.userId, name: this.workspace.userName(input.userId), team_id: teamId },
      container: inMessage
        ? { type: "message", message_ts: input.messageTs, channel_id: input.channelId, is_ephemeral: false }
        : { type: "view", view_id: `V${String(this.next()).padStart(9, "0")}` },
      api_app_id: appId,
      token: VERIFICATION_TOKEN,
      action_id: input.actionId,
      block_id: found?.blockId ?? "fake-block",
      value: input.value,
      team: { id: teamId, domain: "fake-team" },
      is_enterprise_install: false,
      ...(input.channelId !== undefined && { channel: { id: input.channelId, name: this.workspace.channelName(input.channelId) } }),
    };
  }

  /** Shaped like Slack's: three dot-separated parts, the last one hex. */
  private triggerId(): string {
    return `${Date.now()}.${this.next()}.${randomBytes(8).toString("hex")}`;
  }

  private next(): number {
    this.sequence += 1;
    return this.sequence;
  }
}

/** The block and element carrying `actionId`, from a section's accessory or an actions/input block's elements. */
function findElement(blocks: unknown[], actionId: string): { blockId: string; element: Record<string, unknown> } | undefined {
  for (const block of blocks) {
    if (!isRecord(block)) continue;
    const elements = Array.isArray(block.elements) ? block.elements : [block.accessory, block.element];
    const element = elements.find((candidate) => isRecord(candidate) && candidate.action_id === actionId);
    if (isRecord(element)) return { blockId: typeof block.block_id === "string" ? block.block_id : "fake-block", element };
  }
  return undefined;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isPlainText(value: unknown): value is { type: "plain_text"; text: string } {
  return isRecord(value) && value.type === "plain_text" && typeof value.text === "string";
}
