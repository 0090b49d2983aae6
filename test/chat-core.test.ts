// The command layer's own rules, apart from any chat: typed options parsed and checked with clear answers,
// per-user limits with a restart-proof daily quota, admins by id or role, oversized images made to fit.
import { randomBytes } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { BUILTIN_COMMANDS } from "../src/bots/builtin-commands.js";
import { CommandRegistry, optionsOf, parseCommandText, validateOptions, type CommandContext } from "../src/bots/commands.js";
import { ChatCore } from "../src/bots/core.js";
import { RateLimiter } from "../src/bots/limits.js";
import { buttonId, imageUnder, parseButtonId } from "../src/bots/messages.js";
import { JobJournal, type JournalEntry } from "../src/pipeline/journal.js";
import { QueueFullError } from "../src/pipeline/queue.js";

const registry = new CommandRegistry();
for (const command of BUILTIN_COMMANDS) registry.add(command);

const parse = (line: string) => {
  const parsed = parseCommandText(line, registry);
  return { command: parsed.command.name, subcommand: parsed.subcommand, options: parsed.options };
};

describe("typed commands", () => {
  it("takes name:value and --name value anywhere, the rest as the prompt", () => {
    expect(parse("/imagine a red hexagon k:2 with stripes --fusion direct seed:7")).toEqual({
      command: "imagine", subcommand: undefined, options: { prompt: "a red hexagon with stripes", k: "2", fusion: "direct", seed: "7" },
    });
    expect(parse("/lora block hexagon shapes")).toEqual({ command: "lora", subcommand: "block", options: { lora: "hexagon shapes" } });
    // Free-text options run to the next option; numbers and choices are one word.
    expect(parse("/lora add url:https://example.com/neon.safetensors name:neon glow tags:city, night").options).toEqual({
      url: "https://example.com/neon.safetensors", name: "neon glow", tags: "city, night",
    });
    expect(parse("/imagine a cat in the rain loras:hexagon shapes, diagonal stripes").options).toEqual({
      prompt: "a cat in the rain", loras: "hexagon shapes, diagonal stripes",
    });
    // A colon inside the prompt is not an option unless it names one.
    expect(parse("/imagine ratio: a 16:9 sunset").options).toEqual({ prompt: "ratio: a 16:9 sunset" });
  });

  it("answers unknown commands, subcommands and options with what is accepted", () => {
    expect(() => parse("/draw a cat")).toThrow("unknown command /draw; try /help");
    expect(() => parse("/lora delete x")).toThrow("/lora needs one of: info, add, remove, block, unblock");
    expect(() => parse("/imagine a cat --steps 9")).toThrow("unknown option --steps; /imagine takes prompt, loras, k, fusion, seed, size");
  });

  it("checks values against each option's spec", () => {
    const specs = optionsOf(registry.get("imagine")!);
    expect(validateOptions(specs, { prompt: "a cat", k: "3", seed: "12" }, "/imagine")).toEqual({ prompt: "a cat", k: 3, seed: 12 });
    expect(() => validateOptions(specs, { prompt: "a cat", k: "9" }, "/imagine")).toThrow("k must be at most 5");
    expect(() => validateOptions(specs, { prompt: "a cat", k: "two" }, "/imagine")).toThrow("k must be a whole number");
    expect(() => validateOptions(specs, { prompt: "a cat", fusion: "magic" }, "/imagine")).toThrow("fusion must be one of direct, dare, klora, gated");
    expect(() => validateOptions(specs, { k: "2" }, "/imagine")).toThrow("/imagine needs prompt");
    const add = optionsOf(registry.get("lora")!, "add");
    expect(() => validateOptions(add, { name: "n".repeat(101) }, "/lora add")).toThrow("the name is 101 characters; the limit is 100");
  });

  it("refuses a word that looks like an unknown option, naming it, the options taken and how to keep it as text", () => {
    expect(() => parse("/imagine prompt:x foo:bar")).toThrow(
      '/imagine has no option foo (in "foo:bar"); it takes prompt, loras, k, fusion, seed, size. To keep "foo:bar" as text, write foo\\:bar');
    expect(() => parse("/imagine a cat loras:hexagon shapes fusin:direct")).toThrow(/^\/imagine has no option fusin /);
    expect(() => parse("/pool status verbose:yes")).toThrow(/^\/pool status has no option verbose \(in "verbose:yes"\); it takes no options$/);
  });

  it("keeps colons that are no option in the prompt: times, ratios, URLs, prose, and backslash-escaped words", () => {
    expect(parse("/imagine a sign that says 12:30 k:2").options).toEqual({ prompt: "a sign that says 12:30", k: "2" });
    expect(parse("/imagine a 16:9 poster of https://example.com/a:b").options).toEqual({ prompt: "a 16:9 poster of https://example.com/a:b" });
    expect(parse("/imagine style: watercolor, Note:x").options).toEqual({ prompt: "style: watercolor, Note:x" });
    expect(parse("/imagine a label that reads foo\\:bar and k\\:9 seed:3").options).toEqual({ prompt: "a label that reads foo:bar and k:9", seed: "3" });
    expect(parse("/imagine red prompt:a cat").options).toEqual({ prompt: "red a cat" });
    expect(parse("/lora add url:https://example.com/a.safetensors name:neon style\\:glow").options).toEqual({
      url: "https://example.com/a.safetensors", name: "neon style:glow",
    });
  });

  it("refuses an option given twice, or a one-word option whose value is missing", () => {
    expect(() => parse("/imagine a cat k:99 k:1")).toThrow("k is given twice; give it once");
    expect(() => parse("/imagine a cat --k 2 k:3")).toThrow("k is given twice; give it once");
    expect(() => parse("/imagine prompt:a cat prompt:a dog")).toThrow("prompt is given twice; give it once");
    expect(() => parse("/imagine a cat k: 3")).toThrow("k: needs its value right after the colon, e.g. k:1");
    expect(() => parse("/imagine a cat fusion: direct")).toThrow("fusion: needs its value right after the colon, e.g. fusion:direct");
    expect(() => parse("/imagine a cat --k")).toThrow("--k needs a value after it, e.g. --k 1");
    expect(parse("/imagine a cat loras: hexagon shapes").options).toEqual({ prompt: "a cat", loras: "hexagon shapes" });
  });

  it("reads whole numbers only as plain decimal digits, as text (web, Slack) or typed (Discord)", () => {
    const specs = optionsOf(registry.get("imagine")!);
    for (const text of ["0x3", "1e0", "3.0", "+3", "3k", " 3", "Infinity"]) {
      expect(() => validateOptions(specs, { prompt: "a cat", k: text }, "/imagine")).toThrow(
        `k must be a whole number from 1 to 5, written in digits; ${JSON.stringify(text)} is not`);
    }
    expect(() => validateOptions(specs, { prompt: "a cat", k: "" }, "/imagine")).toThrow("k is empty; give a whole number from 1 to 5");
    expect(() => validateOptions(specs, { prompt: "a cat", k: "-1" }, "/imagine")).toThrow("k must be at least 1");
    expect(validateOptions(specs, { prompt: "a cat", seed: "007" }, "/imagine")).toEqual({ prompt: "a cat", seed: 7 });
    expect(validateOptions(specs, { prompt: "a cat", k: 3, seed: 0 }, "/imagine")).toEqual({ prompt: "a cat", k: 3, seed: 0 });
    expect(() => validateOptions(specs, { prompt: "a cat", k: 2.5 }, "/imagine")).toThrow("k must be a whole number from 1 to 5");
    expect(() => validateOptions(specs, { prompt: "a cat", k: 9 }, "/imagine")).toThrow("k must be at most 5");
  });

  it("answers a prompt over the chat's limit with its length and the limit, typed or given as an option", async () => {
    const said: Array<{ text: string }> = [];
    const conversation = { answer: async (message: { text: string }) => { said.push(message); return { edit: async () => undefined }; } };
    const core = new ChatCore({
      commands: registry, chat: { admins: [], reactions: { "👍": 1 }, perMinute: 0, perDay: 0, maxPromptChars: 1000, progressIntervalMs: 0 },
    } as unknown as CommandContext);
    const ada = core.requester({ adapter: "web", userId: "ada", name: "ada" });
    for (const length of [1001, 5000]) {
      await core.handleText(`/imagine ${"a".repeat(length)}`, ada, conversation);
      await core.handle({ command: "imagine", options: { prompt: "a".repeat(length) } }, ada, conversation);
    }
    expect(said.map((message) => message.text)).toEqual([
      "the prompt is 1001 characters; the limit is 1000", "the prompt is 1001 characters; the limit is 1000",
      "the prompt is 5000 characters; the limit is 1000", "the prompt is 5000 characters; the limit is 1000",
    ]);
  });

  it("makes button ids that carry the generation and refuses ids it did not make", () => {
    const id = buttonId("vary", "3f2a0c1e-1111-2222-3333-444455556666", "2");
    expect(id.length).toBeLessThanOrEqual(100);
    expect(parseButtonId(id)).toEqual({ action: "vary", generation: "3f2a0c1e-1111-2222-3333-444455556666", argument: "2" });
    expect(parseButtonId("autolora:launch:abc")).toBeUndefined();
    expect(parseButtonId("someone-else:vary:abc")).toBeUndefined();
    expect(parseButtonId("autolora:vary:../../etc")).toBeUndefined();
  });
});

describe("limits and admins", () => {
  it("limits images per minute and per UTC day, counting the day's stored generations after a restart", async () => {
    let now = Date.UTC(2026, 10, 29, 23, 50);
    const limiter = new RateLimiter({ perMinute: 2, perDay: 5, countToday: async () => 2, now: () => now });
    const ada = { id: "web:ada", name: "ada", admin: false };
    await limiter.take(ada);
    await limiter.take(ada);
    await expect(limiter.take(ada)).rejects.toThrow(/at most 2 images a minute; try again in 60 s/);
    now += 61_000;
    await limiter.take(ada); // 2 stored + 3 now: the day's 5
    now += 61_000;
    await expect(limiter.take(ada)).rejects.toThrow(/used today's 5 images; the quota renews in 1 h \(00:00 UTC\)/);
    await limiter.take({ ...ada, admin: true });
    now = Date.UTC(2026, 10, 30, 0, 1); // a new day, counted afresh
    await limiter.take(ada);
    await limiter.take(ada);
    limiter.refund(ada); // that one was refused by a full queue: it does not count
    await limiter.take(ada);
    await expect(limiter.take(ada)).rejects.toThrow(/at most 2 images a minute/);
  });

  it("makes admins from configured user ids and roles, and refuses others politely", async () => {
    const core = new ChatCore({
      commands: registry, chat: { admins: ["discord:1", "discord:role:9", "slack:U7"], reactions: { "👍": 1 }, perMinute: 0, perDay: 0, maxPromptChars: 100, progressIntervalMs: 0 },
    } as unknown as CommandContext);
    expect(core.requester({ adapter: "discord", userId: "1", name: "a" }).admin).toBe(true);
    expect(core.requester({ adapter: "discord", userId: "2", name: "b", roles: ["9"] }).admin).toBe(true);
    expect(core.requester({ adapter: "slack", userId: "1", name: "c" }).admin).toBe(false); // ids are per chat
    expect(core.requester({ adapter: "slack", userId: "U7", name: "d", roles: ["9"] }).admin).toBe(true);
    const said: Array<{ text: string; ephemeral?: boolean }> = [];
    await core.handleText("/retrain now", core.requester({ adapter: "discord", userId: "2", name: "b" }), {
      answer: async (message) => { said.push(message); return { edit: async () => undefined }; },
    });
    expect(said).toEqual([{ text: "Sorry, /retrain now is for the bot's admins only. Nothing was changed.", ephemeral: true, error: true }]);
  });
});

describe("images for chats with an upload limit", () => {
  it("re-encodes and downscales an image until it fits, and leaves a small one alone", async () => {
    const noise = await sharp(randomBytes(512 * 512 * 3), { raw: { width: 512, height: 512, channels: 3 } }).png().toBuffer();
    expect(noise.length).toBeGreaterThan(200_000);
    const fitted = await imageUnder({ name: "grid.png", data: noise }, 60_000);
    expect(fitted.name).toBe("grid.webp");
    expect(fitted.data.length).toBeLessThanOrEqual(60_000);
    expect((await sharp(fitted.data).metadata()).format).toBe("webp");
    expect((await imageUnder({ name: "grid.png", data: noise }, noise.length)).data).toBe(noise);
  });
});

describe("a job taken up again after a restart", () => {
  it("is told on its own message when it cannot be queued again, and is then forgotten", async () => {
    const journal = new JobJournal(await mkdtemp(join(tmpdir(), "autolora-resume-")));
    const entry: JournalEntry = {
      id: "job-full", adapter: "web", address: { message: "0123456789ab" }, prompt: "a red hexagon", user: "web:guest",
      seeds: [1, 2], accepted_at: "2026-12-03T10:00:00.000Z",
    };
    await journal.accept(entry);
    const core = new ChatCore({
      commands: registry, journal, dataDir: tmpdir(),
      chat: { admins: [], reactions: {}, perMinute: 0, perDay: 0, maxPromptChars: 1000, progressIntervalMs: 0 },
      generations: { get: async () => undefined },
      pipeline: { imagine: () => { throw new QueueFullError("the queue is full (50 jobs); try again in about 2 minutes", 120_000); } },
    } as unknown as CommandContext);
    const shown: string[] = [];
    await core.resume(entry, { edit: async (message) => void shown.push(message.text) });
    expect(shown).toEqual(["**a red hexagon**\n❌ this could not be taken up again after the bot restarted: " +
      "the queue is full (50 jobs); try again in about 2 minutes. Please ask again."]);
    expect(await journal.entries()).toEqual([]);
    // Where even that cannot be posted (the chat is down), it waits for the next start.
    await journal.accept(entry);
    await core.resume(entry, { edit: async () => { throw new Error("chat unreachable"); } });
    expect((await journal.entries()).map((kept) => kept.id)).toEqual(["job-full"]);
  });
});
