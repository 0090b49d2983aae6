// What the operator's log says when /lora add is refused: a refused URL or file is expected, so it is one line
// with its code and message; only an unexpected failure keeps its stack trace.
import { execFileSync } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BUILTIN_COMMANDS } from "../src/bots/builtin-commands.js";
import { CommandRegistry, type CommandContext } from "../src/bots/commands.js";
import { ChatCore, type Conversation } from "../src/bots/core.js";
import type { BotMessage } from "../src/bots/messages.js";
import { download } from "../src/pool/download.js";
import { readSafetensorsHeader } from "../src/pool/safetensors.js";

/** A chat core whose /lora add runs `addFromUrl`; everything /lora add does not touch is left out. */
function core(addFromUrl: CommandContext["addFromUrl"]) {
  const commands = new CommandRegistry();
  for (const command of BUILTIN_COMMANDS) commands.add(command);
  const context = {
    commands, addFromUrl, dataDir: tmpdir(), k: 2, minSimilarity: 0,
    chat: { admins: ["web:admin"], reactions: {}, perMinute: 0, perDay: 0, maxPromptChars: 1000, progressIntervalMs: 0 },
  } as unknown as CommandContext;
  const logged: string[] = [];
  const chat = new ChatCore(context, (line) => logged.push(line));
  const said: BotMessage[] = [];
  const conversation: Conversation = {
    answer: async (message) => {
      said.push(message);
      return { edit: async (edited) => void said.push(edited) };
    },
  };
  const admin = chat.requester({ adapter: "web", userId: "admin", name: "Admin" });
  return { logged, said, add: (url: string) => chat.handleText(`/lora add url:${url}`, admin, conversation) };
}

const downloadOnly = async (url: string) => {
  await download(url, { tempDir: await mkdtemp(join(tmpdir(), "autolora-refusal-")), maxBytes: 1e6 });
  throw new Error("the download was expected to be refused");
};

describe("refusals in the log", () => {
  it.each(["https://127.0.0.1/x", "https://10.0.0.1/lora.safetensors", "https://[::127.0.0.1]/x", "ftp://example.com/x"])(
    "logs a refused %s as one line with its code, and tells the admin why", async (url) => {
      const { logged, said, add } = core(downloadOnly);
      await add(url);
      expect(logged).toHaveLength(1);
      expect(logged[0]).toMatch(/^\[chat\] \/lora add refused: (private-address|bad-url): \S/);
      expect(logged[0]).not.toContain("\n");
      expect(said.at(-1)).toMatchObject({ error: true, text: expect.stringMatching(/public addresses|only https/) });
    });

  it("logs a refused file (a FIFO) as one line too", async () => {
    const fifo = join(await mkdtemp(join(tmpdir(), "autolora-refusal-")), "pipe.safetensors");
    execFileSync("mkfifo", [fifo]);
    const { logged, add } = core(async () => {
      await readSafetensorsHeader(fifo);
      throw new Error("the FIFO was expected to be refused");
    });
    await add("https://example.com/pipe.safetensors");
    expect(logged).toEqual([`[chat] /lora add refused: not-a-regular-file: ${fifo} is a named pipe (FIFO), not a regular file; ` +
      "give the path of a .safetensors file"]);
  });

  it("keeps the stack trace of an unexpected failure", async () => {
    const { logged, add } = core(async () => { throw new Error("the index is on fire"); });
    await add("https://example.com/x.safetensors");
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatch(/^\[chat\] \/lora add failed: Error: the index is on fire\n\s+at /);
  });
});
