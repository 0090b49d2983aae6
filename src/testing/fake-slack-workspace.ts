// The state of the fake Slack workspace (messages, files, response_urls) and the Web API methods that read and
// change it, answering with the fields Slack answers with. fake-slack.ts puts this behind HTTP.
import { z } from "zod";

export interface FakeSlackMessage {
  channel: string;
  ts: string;
  text: string;
  blocks: unknown[];
  thread_ts?: string;
  /** Ids of the files shared with this message (files.completeUploadExternal with a channel_id). */
  files: string[];
  /** How many times chat.update or a replace_original response changed it. */
  edits: number;
  /** Its texts before each of those changes, oldest first. */
  history: string[];
  deleted?: boolean;
  /** Reactions the bot added (reactions.add), by name. */
  reactions: string[];
}

export interface FakeSlackFile {
  id: string;
  filename: string;
  title?: string;
  /** The bytes POSTed to the upload_url; empty until then. */
  data: Buffer;
  channel?: string;
  initial_comment?: string;
  thread_ts?: string;
  completed: boolean;
}

/** Who the fake is: the team and the bot an app installed in it runs as. */
export interface FakeSlackIdentity {
  teamId: string;
  botUserId: string;
  botId: string;
  appId: string;
  /** Users that users.info knows by name; any other id is an invented ordinary user. */
  users: Record<string, { name: string; isAdmin?: boolean }>;
}

/** Where a response_url's messages land: the conversation, and the message an interaction came from. */
export interface ResponseTarget {
  channel: string;
  messageTs?: string;
}

/** Slack's `{ ok: false, error: code }` answer; `messages` become response_metadata.messages. */
export class SlackApiError extends Error {
  constructor(
    readonly code: string,
    readonly messages: string[] = [],
  ) {
    super(messages.length > 0 ? `${code}: ${messages.join("; ")}` : code);
    this.name = "SlackApiError";
  }
}

/** The one default channel the payload builders use when a test names none. */
export const DEFAULT_CHANNEL = { id: "C0FAKEGENRL", name: "general" };

const channel = z.string().min(1);
const ts = z.string().min(1);
const content = { text: z.string().optional(), blocks: z.array(z.unknown()).optional(), attachments: z.unknown().optional() };
const schemas = {
  postMessage: z.object({ channel, thread_ts: z.string().optional(), ...content }),
  update: z.object({ channel, ts, ...content }),
  delete: z.object({ channel, ts }),
  postEphemeral: z.object({ channel, user: z.string().min(1), thread_ts: z.string().optional(), ...content }),
  getPermalink: z.object({ channel, message_ts: ts }),
  conversation: z.object({ channel }),
  user: z.object({ user: z.string().min(1) }),
  reaction: z.object({ channel, timestamp: ts, name: z.string().min(1) }),
  reactions: z.object({ channel, timestamp: ts }),
  getUploadUrl: z.object({ filename: z.string().min(1), length: z.coerce.number().int().positive(), alt_text: z.string().optional() }),
  completeUpload: z.object({
    files: z.array(z.object({ id: z.string().min(1), title: z.string().optional() })).min(1),
    channel_id: z.string().optional(),
    initial_comment: z.string().optional(),
    thread_ts: z.string().optional(),
  }),
};

/** Checks a method's arguments the way Slack reports bad ones: invalid_arguments plus one line per problem. */
function parse<Schema extends z.ZodType>(schema: Schema, args: Record<string, unknown>): z.output<Schema> {
  const result = schema.safeParse(args);
  if (result.success) return result.data;
  throw new SlackApiError(
    "invalid_arguments",
    result.error.issues.map((issue) => `[ERROR] ${issue.message} [json-pointer:/${issue.path.join("/")}]`),
  );
}

type Method = (args: Record<string, unknown>) => Record<string, unknown>;

export class FakeSlackWorkspace {
  readonly messages = new Map<string, FakeSlackMessage>();
  readonly files = new Map<string, FakeSlackFile>();
  private readonly uploaded = new Set<string>();
  private readonly responseTargets = new Map<string, ResponseTarget>();
  private sequence = 0;

  /** `uploadUrl` gives the URL files.getUploadURLExternal hands out for a file id. */
  constructor(
    readonly identity: FakeSlackIdentity,
    private readonly uploadUrl: (fileId: string) => string,
  ) {}

  /** Runs one Web API method; returns the answer's fields besides `ok`, or throws SlackApiError. */
  call(method: string, args: Record<string, unknown>): Record<string, unknown> {
    const run = this.methods[method];
    if (run === undefined) throw new SlackApiError("unknown_method");
    return run(args);
  }

  userName(userId: string): string {
    return this.identity.users[userId]?.name ?? (userId === this.identity.botUserId ? "fakebot" : `user-${userId.toLowerCase()}`);
  }

  channelName(channelId: string): string {
    return channelId === DEFAULT_CHANNEL.id ? DEFAULT_CHANNEL.name : `channel-${channelId.toLowerCase()}`;
  }

  /** A message as Slack shows it in API answers and interaction payloads. */
  messageJson(message: FakeSlackMessage): { type: "message"; ts: string; text: string; [field: string]: unknown } {
    const { botUserId, botId, appId, teamId } = this.identity;
    return {
      type: "message",
      user: botUserId,
      bot_id: botId,
      app_id: appId,
      team: teamId,
      text: message.text,
      blocks: message.blocks,
      ts: message.ts,
      ...(message.thread_ts !== undefined && { thread_ts: message.thread_ts }),
      ...(message.files.length > 0 && { files: message.files.map((id) => ({ id })) }),
    };
  }

  /** Registers where a new response_url's messages go; returns its id (the last part of the URL). */
  openResponseUrl(target: ResponseTarget): string {
    const id = `R${this.next()}`;
    this.responseTargets.set(id, target);
    return id;
  }

  /**
   * Applies what an app POSTed to a response_url: replace_original / delete_original change the message the
   * interaction came from, response_type "in_channel" posts a new message; an ephemeral reply changes nothing.
   * Returns false for an id this fake never handed out.
   */
  respond(id: string, body: Record<string, unknown>): boolean {
    const target = this.responseTargets.get(id);
    if (target === undefined) return false;
    const original = target.messageTs === undefined ? undefined : this.messages.get(target.messageTs);
    if (isTrue(body.delete_original) && original !== undefined) {
      original.deleted = true;
    } else if (isTrue(body.replace_original) && original !== undefined) {
      original.history.push(original.text);
      if (typeof body.text === "string") original.text = body.text;
      if (Array.isArray(body.blocks)) original.blocks = body.blocks;
      original.edits += 1;
    } else if (body.response_type === "in_channel") {
      this.addMessage({
        channel: target.channel,
        text: typeof body.text === "string" ? body.text : "",
        blocks: Array.isArray(body.blocks) ? body.blocks : [],
        thread_ts: typeof body.thread_ts === "string" ? body.thread_ts : undefined,
      });
    }
    return true;
  }

  /** Stores the bytes POSTed to a file's upload_url; false when no such upload is waiting. */
  receiveUpload(fileId: string, data: Buffer): boolean {
    const file = this.files.get(fileId);
    if (file === undefined || file.completed) return false;
    file.data = data;
    this.uploaded.add(fileId);
    return true;
  }

  private readonly methods: Record<string, Method> = {
    "auth.test": () => ({
      url: "https://fake.slack.test/",
      team: "Fake Team",
      user: this.userName(this.identity.botUserId),
      team_id: this.identity.teamId,
      user_id: this.identity.botUserId,
      bot_id: this.identity.botId,
      is_enterprise_install: false,
    }),
    "chat.postMessage": (args) => {
      const { channel, text, blocks, attachments, thread_ts } = parse(schemas.postMessage, args);
      if (text === undefined && blocks === undefined && attachments === undefined) throw new SlackApiError("no_text");
      const message = this.addMessage({ channel, text: text ?? "", blocks: blocks ?? [], thread_ts });
      return { channel, ts: message.ts, message: this.messageJson(message) };
    },
    "chat.update": (args) => {
      const { channel, ts, text, blocks } = parse(schemas.update, args);
      const message = this.liveMessage(channel, ts);
      message.history.push(message.text);
      if (text !== undefined) message.text = text;
      if (blocks !== undefined) message.blocks = blocks;
      message.edits += 1;
      return { channel, ts, text: message.text, message: this.messageJson(message) };
    },
    "chat.delete": (args) => {
      const { channel, ts } = parse(schemas.delete, args);
      this.liveMessage(channel, ts).deleted = true;
      return { channel, ts };
    },
    // An ephemeral message is seen by one user and never stored by Slack; the recorded call is its only trace.
    "chat.postEphemeral": (args) => {
      const { text, blocks, attachments } = parse(schemas.postEphemeral, args);
      if (text === undefined && blocks === undefined && attachments === undefined) throw new SlackApiError("no_text");
      return { message_ts: this.nextTs() };
    },
    "chat.getPermalink": (args) => {
      const { channel, message_ts } = parse(schemas.getPermalink, args);
      this.liveMessage(channel, message_ts);
      return { channel, permalink: `https://fake.slack.test/archives/${channel}/p${message_ts.replace(".", "")}` };
    },
    "conversations.info": (args) => {
      const { channel: id } = parse(schemas.conversation, args);
      return {
        channel: {
          id,
          name: this.channelName(id),
          is_channel: id.startsWith("C"),
          is_group: id.startsWith("G"),
          is_im: id.startsWith("D"),
          is_private: !id.startsWith("C"),
          is_archived: false,
          is_member: true,
          context_team_id: this.identity.teamId,
        },
      };
    },
    "users.info": (args) => {
      const { user: id } = parse(schemas.user, args);
      const name = this.userName(id);
      return {
        user: {
          id,
          team_id: this.identity.teamId,
          name,
          real_name: name,
          deleted: false,
          is_admin: this.identity.users[id]?.isAdmin ?? false,
          is_owner: false,
          is_bot: id === this.identity.botUserId,
          profile: { display_name: name, real_name: name },
        },
      };
    },
    "reactions.add": (args) => {
      const { channel, timestamp, name } = parse(schemas.reaction, args);
      const message = this.liveMessage(channel, timestamp);
      if (message.reactions.includes(name)) throw new SlackApiError("already_reacted");
      message.reactions.push(name);
      return {};
    },
    "reactions.remove": (args) => {
      const { channel, timestamp, name } = parse(schemas.reaction, args);
      const message = this.liveMessage(channel, timestamp);
      if (!message.reactions.includes(name)) throw new SlackApiError("no_reaction");
      message.reactions = message.reactions.filter((reaction) => reaction !== name);
      return {};
    },
    "reactions.get": (args) => {
      const { channel, timestamp } = parse(schemas.reactions, args);
      const message = this.liveMessage(channel, timestamp);
      const reactions = message.reactions.map((name) => ({ name, count: 1, users: [this.identity.botUserId] }));
      return { type: "message", channel, message: { ...this.messageJson(message), reactions } };
    },
    "files.getUploadURLExternal": (args) => {
      const { filename } = parse(schemas.getUploadUrl, args);
      const id = `F${this.next()}`;
      this.files.set(id, { id, filename, data: Buffer.alloc(0), completed: false });
      return { upload_url: this.uploadUrl(id), file_id: id };
    },
    "files.completeUploadExternal": (args) => {
      const { files, channel_id, initial_comment, thread_ts } = parse(schemas.completeUpload, args);
      for (const { id } of files) {
        if (!this.uploaded.has(id) || this.files.get(id)?.completed) throw new SlackApiError("file_not_found", [`[ERROR] ${id}`]);
      }
      const completed = files.map(({ id, title }) => {
        const file = this.files.get(id)!;
        Object.assign(file, { title: title ?? file.filename, channel: channel_id, initial_comment, thread_ts, completed: true });
        return { id, title: file.title };
      });
      if (channel_id !== undefined) {
        const message = this.addMessage({ channel: channel_id, text: initial_comment ?? "", blocks: [], thread_ts });
        message.files = files.map(({ id }) => id);
      }
      return { files: completed };
    },
  };

  private addMessage(fields: Pick<FakeSlackMessage, "channel" | "text" | "blocks" | "thread_ts">): FakeSlackMessage {
    const message: FakeSlackMessage = { ...fields, ts: this.nextTs(), files: [], edits: 0, history: [], reactions: [] };
    if (message.thread_ts === undefined) delete message.thread_ts;
    this.messages.set(message.ts, message);
    return message;
  }

  private liveMessage(channel: string, ts: string): FakeSlackMessage {
    const message = this.messages.get(ts);
    if (message === undefined || message.channel !== channel || message.deleted) throw new SlackApiError("message_not_found");
    return message;
  }

  /** Slack's message timestamps: seconds, a dot, six digits; the sequence keeps them unique and increasing. */
  private nextTs(): string {
    return `${Math.floor(Date.now() / 1000)}.${String(this.next()).padStart(6, "0")}`;
  }

  private next(): number {
    this.sequence += 1;
    return this.sequence;
  }
}

/** Form bodies carry booleans as text. */
function isTrue(value: unknown): boolean {
  return value === true || value === "true";
}
