// Slack through Bolt: slash commands (/imagine, /loras, /lora, /pool, /retrain, /help, each taking typed text),
// button clicks and reactions, translated to and from ChatCore. Bolt's HTTP receiver (signatures verified) or
// Socket Mode, by config. Every request is acked before any other work (Slack allows 3 s); progress edits the
// bot's message with chat.update; the finished grid is uploaded with files.uploadV2, its buttons posted under it.
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import { App, HTTPReceiver, LogLevel, type BlockAction, type ButtonAction, type RespondFn, type SlackCommandMiddlewareArgs } from "@slack/bolt";
import type { WebClient } from "@slack/web-api";
import { z } from "zod";
import type { Requester } from "../commands.js";
import type { ChatCore, Conversation, MessageHandle } from "../core.js";
import { imageUnder, type BotMessage } from "../messages.js";
import type { ChatAdapter, ChatAdapterFactory } from "../../plugins.js";

export interface SlackAdapterOptions {
  core: ChatCore;
  botToken: string;
  /** "http": Slack POSTs to host:port/path, signed with signingSecret. "socket": Socket Mode with appToken. */
  mode: "http" | "socket";
  signingSecret?: string;
  appToken?: string;
  host?: string;
  /** 0 picks a free port. Default 3000. */
  port?: number;
  /** Default /slack/events. */
  path?: string;
  /** Web API base, e.g. a local fake's http://127.0.0.1:PORT/api/. Default: Slack's. */
  apiUrl?: string;
  /** Largest file to upload. Default 50 MB. */
  uploadLimitBytes?: number;
  /** Retries of a failed Web API call (web-api's default retries for many minutes; tests want 0). */
  retries?: number;
  log?: (line: string) => void;
}

/** Slack names reactions; the config names them by emoji. The common ones, both ways. */
const REACTION_NAMES: Record<string, string> = {
  "+1": "👍", thumbsup: "👍", "-1": "👎", thumbsdown: "👎", star: "⭐", star2: "🌟", heart: "❤️", fire: "🔥",
  "100": "💯", tada: "🎉", heart_eyes: "😍", x: "❌", white_check_mark: "✅",
};
const MAX_TEXT = 3000;
const slackAddress = z.strictObject({ channel: z.string().regex(/^[\w-]{1,64}$/), ts: z.string().regex(/^\d{1,12}\.\d{1,8}$/) });
const BUTTONS_TEXT = "↑ upscale (U), vary (V), reroll 🔄, how it was made ℹ️; rate it with the buttons or a reaction here";

export class SlackAdapter implements ChatAdapter {
  readonly name = "slack";
  readonly app: App;
  private readonly log: (line: string) => void;
  private server: Server | undefined;
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(private readonly options: SlackAdapterOptions) {
    this.log = options.log ?? (() => undefined);
    const clientOptions = {
      ...(options.apiUrl ? { slackApiUrl: options.apiUrl } : {}),
      ...(options.retries !== undefined ? { retryConfig: { retries: options.retries } } : {}),
    };
    // convoStore off: we keep no conversation state in Bolt, and its default store cost every request a lookup
    // (a rejected promise with a stack trace when nothing is stored) before the handler could acknowledge.
    if (options.mode === "socket") {
      if (!options.appToken) throw new Error("Slack Socket Mode needs SLACK_APP_TOKEN (an xapp- token with connections:write)");
      this.app = new App({ token: options.botToken, appToken: options.appToken, socketMode: true, clientOptions, logLevel: LogLevel.ERROR, convoStore: false });
    } else {
      if (!options.signingSecret) throw new Error("the Slack HTTP receiver needs SLACK_SIGNING_SECRET (Basic Information → Signing Secret)");
      const receiver = new HTTPReceiver({
        signingSecret: options.signingSecret, endpoints: options.path ?? "/slack/events", logLevel: LogLevel.ERROR,
        // Ack first, work after: the HTTP answer leaves as soon as a handler calls ack().
        processBeforeResponse: false,
      });
      this.app = new App({ token: options.botToken, receiver, clientOptions, logLevel: LogLevel.ERROR, convoStore: false });
    }
    this.app.command(/^\/[a-z][a-z0-9-]*$/, (args) => this.command(args));
    this.app.action<BlockAction<ButtonAction>>(/^autolora:/, async ({ ack, body, action, respond, client }) => {
      await ack();
      this.track(this.button(body, action, respond, client));
    });
    this.app.event("reaction_added", async ({ event }) => this.track(this.reaction(event.user, event.item, event.reaction, false)));
    this.app.event("reaction_removed", async ({ event }) => this.track(this.reaction(event.user, event.item, event.reaction, true)));
    this.app.error(async (error) => this.log(`[slack] ${error.message}`));
  }

  /** Connect (Socket Mode) or listen (HTTP); resolves to the Request URL to configure in Slack for HTTP. */
  async start(): Promise<{ url?: string }> {
    if (this.options.mode === "socket") {
      await this.app.start();
      this.log("[slack] connected in Socket Mode");
      return {};
    }
    const host = this.options.host ?? "0.0.0.0";
    this.server = await this.app.start({ port: this.options.port ?? 3000, host }) as Server;
    const port = (this.server.address() as AddressInfo).port;
    const url = `http://${host === "0.0.0.0" ? "127.0.0.1" : host}:${port}${this.options.path ?? "/slack/events"}`;
    this.log(`[slack] listening for Slack on ${url} (give Slack the public URL that reaches it)`);
    return { url };
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
    await this.app.stop();
  }

  private track(work: Promise<unknown>): void {
    const tracked = work.catch((error: unknown) => this.log(`[slack] ${error instanceof Error ? error.stack ?? error.message : String(error)}`))
      .finally(() => this.inFlight.delete(tracked));
    this.inFlight.add(tracked);
  }

  private requester(userId: string, name?: string): Requester {
    return this.options.core.requester({ adapter: "slack", userId, name: name ?? userId });
  }

  private async command({ command, ack, respond, client }: SlackCommandMiddlewareArgs & { client: WebClient }): Promise<void> {
    await ack();
    const requester = this.requester(command.user_id, command.user_name);
    const line = `${command.command} ${command.text}`;
    this.track(this.options.core.handleText(line, requester, this.conversation(client, command.channel_id, respond)));
  }

  private async button(body: BlockAction, action: ButtonAction, respond: RespondFn, client: WebClient): Promise<void> {
    const channel = body.channel?.id ?? body.container?.channel_id;
    const messageTs = body.message?.ts ?? body.container?.message_ts;
    if (!channel) return;
    const conversation = this.conversation(client, channel, respond);
    conversation.removeSource = async () => {
      if (messageTs) await client.chat.delete({ channel, ts: messageTs });
    };
    await this.options.core.press(action.action_id, this.requester(body.user.id, body.user.name), conversation);
  }

  private async reaction(user: string, item: { type: string; channel?: string; ts?: string }, name: string, removed: boolean): Promise<void> {
    if (item.type !== "message" || !item.channel || !item.ts) return;
    const emoji = REACTION_NAMES[name.replace(/::skin-tone-\d$/, "")] ?? `:${name}:`;
    const outcome = await this.options.core.react(`slack:${item.channel}:${item.ts}`, this.requester(user), emoji, removed);
    if (outcome !== "ignored") this.log(`[slack] slack:${user} ${outcome} ${item.ts} with ${emoji}`);
  }

  /**
   * Answers in a channel: ephemeral ones through respond() (only the user sees them), public ones as bot
   * messages edited with chat.update. A message with an image becomes the uploaded file (caption as its
   * comment) followed by the buttons, replacing the progress message.
   */
  private conversation(client: WebClient, channel: string, respond: RespondFn): Conversation {
    return {
      answer: async (message) => {
        if (message.ephemeral) {
          const say = (next: BotMessage) => respond({ response_type: "ephemeral", replace_original: false, text: mrkdwn(next.text), ...this.blocks(next) });
          await say(message);
          return { edit: async (next) => void await say(next) };
        }
        return this.handle(client, channel, await this.show(client, channel, message));
      },
    };
  }

  /** Edits of a bot message in a channel; the finished image replaces it (a file cannot be added to a message). */
  private handle(client: WebClient, channel: string, posted: string | undefined): MessageHandle {
    let ts = posted;
    const at = () => ts ? { key: `slack:${channel}:${ts}`, address: { channel, ts } } : { key: undefined, address: undefined };
    const handle: MessageHandle = {
      ...at(),
      edit: async (next) => {
        if (ts && !next.image?.path) {
          try {
            return void await client.chat.update({ channel, ts, text: mrkdwn(next.text), ...this.blocks(next) });
          } catch (error) {
            // Someone deleted it (or a restart left it replaced): the answer goes on in a new message.
            if ((error as { data?: { error?: string } }).data?.error !== "message_not_found") throw error;
            ts = undefined;
          }
        }
        if (ts) await client.chat.delete({ channel, ts }).catch((error: unknown) => this.log(`[slack] could not delete message ${ts}: ${String(error)}`));
        ts = await this.show(client, channel, next);
        Object.assign(handle, at());
      },
    };
    return handle;
  }

  /** A bot message posted before a restart ({ channel, ts }), edited with the bot token. */
  reopen(address: unknown): MessageHandle | undefined {
    const parsed = slackAddress.safeParse(address);
    return parsed.success ? this.handle(this.app.client, parsed.data.channel, parsed.data.ts) : undefined;
  }

  /** Post a message; one with an image is the uploaded file (caption as its comment) with its buttons after it. */
  private async show(client: WebClient, channel: string, message: BotMessage): Promise<string | undefined> {
    if (!message.image?.path) return this.post(client, channel, message);
    await this.upload(client, channel, message);
    return message.buttons?.length ? this.post(client, channel, { ...message, text: `${message.text.split("\n")[0]}\n${BUTTONS_TEXT}` }) : undefined;
  }

  private async post(client: WebClient, channel: string, message: BotMessage): Promise<string> {
    const posted = await client.chat.postMessage({ channel, text: mrkdwn(message.text), ...this.blocks(message) });
    if (!posted.ts) throw new Error("Slack did not return the message's ts");
    return posted.ts;
  }

  /** files.uploadV2: getUploadURLExternal → POST the bytes → completeUploadExternal, shared to the channel. */
  private async upload(client: WebClient, channel: string, message: BotMessage): Promise<void> {
    const file = await imageUnder(message.image!, this.options.uploadLimitBytes ?? 50_000_000);
    await client.files.uploadV2({ channel_id: channel, file: file.data, filename: file.name, title: file.name, initial_comment: mrkdwn(message.text) });
  }

  /** Text and button rows as Block Kit blocks (none when there are no buttons: plain text is enough). */
  private blocks(message: BotMessage): { blocks?: object[] } {
    if (!message.buttons?.length) return {};
    const text = mrkdwn(message.text).slice(0, MAX_TEXT);
    return {
      blocks: [
        { type: "section", text: { type: "mrkdwn", text } },
        ...message.buttons.map((row) => ({
          type: "actions",
          elements: row.map((button) => ({
            type: "button", action_id: button.id, value: button.id, text: { type: "plain_text", text: button.label, emoji: true },
            ...(button.style === "danger" ? { style: "danger" } : button.style === "primary" ? { style: "primary" } : {}),
          })),
        })),
      ],
    };
  }
}

/** Our **bold** is Slack's *bold*. */
function mrkdwn(text: string): string {
  return text.replace(/\*\*([^*]+)\*\*/g, "*$1*");
}

export const slackAdapterFactory: ChatAdapterFactory = {
  name: "slack",
  create: ({ config, core, secrets, log }) => {
    const botToken = secrets.get("slackBotToken");
    if (!botToken) return undefined;
    return new SlackAdapter({
      core, botToken, mode: config.slack.mode, log,
      signingSecret: config.slack.mode === "http" ? secrets.require("slackSigningSecret", "Slack's HTTP mode (slack.mode: http)") : undefined,
      appToken: config.slack.mode === "socket" ? secrets.require("slackAppToken", "Slack's Socket Mode (slack.mode: socket)") : undefined,
      host: config.slack.host, port: config.slack.port, path: config.slack.path, apiUrl: config.slack.api_url || undefined,
    });
  },
};
