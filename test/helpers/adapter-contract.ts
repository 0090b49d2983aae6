// The adapter contract: what a person sees on any chat the bot lives on. Each adapter's harness drives its
// platform the way that platform would (HTTP and SSE for the web chat, a fake Discord gateway and REST API for
// discord.js, signed requests and a fake Web API for Bolt) and reports the posts as the user would see them.
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { expect, it } from "vitest";
import { resumeJobs } from "../../src/bots/resume.js";
import type { JournalEntry } from "../../src/pipeline/journal.js";
import type { ChatAdapter } from "../../src/plugins.js";
import { diffusersLora } from "../../src/testing/safetensors.js";
import type { fakeHost } from "../../src/testing/fake-host.js";

export type FakeHost = Awaited<ReturnType<typeof fakeHost>>;

/** A message as the user sees it. */
export interface Post {
  /** The chat's id for it (what buttons and reactions refer to). */
  ref: string;
  text: string;
  buttons: Array<{ id: string; label: string }>;
  /** The attached image's bytes, if it has one. */
  image?: Buffer;
  ephemeral: boolean;
  deleted: boolean;
  /** Earlier texts of the message, before its edits. */
  history?: string[];
}

export type User = "alice" | "bob" | "admin";

export interface Harness {
  /** Type a command as `user` (adapters with typed options get them parsed as a person would fill them). */
  command(user: User, line: string): Promise<{ ackMs: number }>;
  press(user: User, post: Post, label: string): Promise<void>;
  react(user: User, post: Post, emoji: string, removed?: boolean): Promise<void>;
  /** Everything shown so far, oldest first. */
  posts(): Promise<Post[]>;
  /** The requester id the core sees for `user` (ratings are stored under it). */
  idOf(user: User): string;
}

const TIMEOUT = 20_000;

/** Poll until some post, among those after `after`, passes `test`. */
export async function waitForPost(harness: Harness, test: (post: Post) => boolean, after = 0, timeoutMs = TIMEOUT): Promise<Post> {
  const deadline = Date.now() + timeoutMs;
  let seen: Post[] = [];
  while (Date.now() < deadline) {
    seen = (await harness.posts()).slice(after);
    const found = seen.find(test);
    if (found) return found;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`no post matched within ${timeoutMs} ms; posts: ${JSON.stringify(seen.map((post) => ({ text: post.text.slice(0, 80), buttons: post.buttons.map((b) => b.label), image: post.image?.length })))}`);
}

const labels = (post: Post) => post.buttons.map((button) => button.label);
const isResult = (post: Post) => labels(post).includes("U1") && !post.deleted;
const PNG = [0x89, 0x50, 0x4e, 0x47];
const WEBP = [0x52, 0x49, 0x46, 0x46];
const isImage = (bytes: Buffer | undefined) => !!bytes && bytes.length > 20
  && (PNG.every((byte, i) => bytes[i] === byte) || WEBP.every((byte, i) => bytes[i] === byte));

/** The suite every chat adapter passes. `setup` returns the harness and the fake host behind it. */
export function adapterContract(setup: () => { harness: Harness; host: FakeHost; adapter: ChatAdapter }): void {
  const count = async () => (await setup().harness.posts()).length;

  it("acknowledges /imagine within 3 s with its place in line, then shows the grid with its buttons and LoRAs", async () => {
    const { harness, host } = setup();
    const before = await count();
    const { ackMs } = await harness.command("alice", "/imagine a red hexagon with diagonal stripes");
    expect(ackMs).toBeLessThan(3000);
    const acknowledged = (post: Post) => [...(post.history ?? []), post.text].find((text) => /⏳ (queued: (next|#\d+) in line|starting)/.test(text));
    const first = await waitForPost(harness, (post) => acknowledged(post) !== undefined, before);
    expect(acknowledged(first)).toContain("a red hexagon with diagonal stripes");
    const result = await waitForPost(harness, isResult, before);
    expect(labels(result)).toEqual(expect.arrayContaining(["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4", "🔄", "ℹ️", "👍", "👎", "⭐", "🗑"]));
    const posts = (await harness.posts()).slice(before);
    const acked = posts.find((post) => post.ref === first.ref)!;
    expect([...(acked.history ?? []), acked.text].join("\n"), "progress edits show the steps").toMatch(/step \d+ of \d+/);
    const withImage = posts.filter((post) => isImage(post.image));
    expect(withImage.length, "the grid is attached").toBeGreaterThan(0);
    expect(posts.map((post) => post.text).join("\n")).toMatch(/hexagon shapes \(0\.\d\d\)/);
    const generation = result.buttons[0]!.id.split(":")[2]!;
    expect((await host.generations.get(generation))?.user).toBe(harness.idOf("alice"));
  }, 30_000);

  it("answers a job accepted before a restart on its own acknowledgement, reopened after it", async () => {
    const { harness, host, adapter } = setup();
    const journal = host.context.journal!;
    const accepted: JournalEntry[] = [];
    const accept = journal.accept.bind(journal);
    journal.accept = async (entry) => {
      accepted.push(entry);
      await accept(entry);
    };
    try {
      const before = await count();
      await harness.command("bob", "/imagine five-pointed stars");
      await waitForPost(harness, isResult, before);
    } finally {
      journal.accept = accept;
    }
    expect(accepted).toHaveLength(1);
    await expect.poll(() => journal.entries()).toEqual([]); // answered: crossed off
    // The host went down before drawing it: the same acknowledgement, under a job id nothing has drawn.
    const entry = { ...accepted[0]!, id: randomUUID() };
    await journal.accept(entry);
    expect(await resumeJobs(journal, host.core, [adapter], () => undefined)).toBe(1);
    const result = await waitForPost(harness, (post) => isResult(post) && post.buttons.some((button) => button.id.includes(entry.id)));
    expect(result.text).toContain("five-pointed stars");
    expect((await host.generations.get(entry.id))?.seeds).toEqual(entry.seeds);
    expect(await journal.entries()).toEqual([]);
    const shown = (await harness.posts()).flatMap((post) => [...(post.history ?? []), post.text]).join("\n");
    expect(shown).toContain("taken up again after the bot restarted");
  });

  it("U2 posts that image at full size; ℹ️ shows prompt, seeds, LoRAs with scores and the words they cover, fusion and versions", async () => {
    const { harness } = setup();
    const result = await waitForPost(harness, isResult);
    const before = await count();
    await harness.press("alice", result, "U2");
    const single = await waitForPost(harness, (post) => isImage(post.image) && /image 2/.test(post.text), before);
    expect(single.text).toMatch(/seed \d+/);
    await harness.press("bob", result, "ℹ️");
    const info = await waitForPost(harness, (post) => /seeds: /.test(post.text), before);
    expect(info.text).toMatch(/fusion: gated/);
    // Each LoRA's score parts (weights, text when it has any) and the prompt word it covers.
    expect(info.text).toMatch(/hexagon shapes .*similarity 0\.\d{3} \(weights 0\.\d\d · no text\) · covers “hexagon”/);
    // Covering selection: the prompt names an object and a style, so the second LoRA is the style's.
    expect(info.text).toMatch(/diagonal stripes .*similarity 0\.\d{3} \(weights 0\.\d\d · text 0\.\d\d\) · covers “(diagonal|stripes)”/);
    expect(info.text).toMatch(/model \S+ · gates \S+/);
  }, 30_000);

  it("V1 draws a variation with the same LoRAs and nearby seeds", async () => {
    const { harness, host } = setup();
    const result = await waitForPost(harness, isResult);
    const original = (await host.generations.get(result.buttons[0]!.id.split(":")[2]!))!;
    const before = await count();
    await harness.press("alice", result, "V1");
    const variation = await waitForPost(harness, (post) => isResult(post) && /Variation of image 1/.test(post.text), before);
    const made = (await host.generations.get(variation.buttons[0]!.id.split(":")[2]!))!;
    expect(made.loras.map((lora) => lora.id)).toEqual(original.loras.map((lora) => lora.id));
    expect(made.seeds[0]).toBeGreaterThan(original.seeds[0]!);
    expect(made.seeds[0]! - original.seeds[0]!).toBeLessThan(16);
  }, 30_000);

  it("a reaction rates the generation, once per user: reacting again replaces it, removing it takes it back", async () => {
    const { harness, host } = setup();
    const result = await waitForPost(harness, isResult);
    const generation = result.buttons[0]!.id.split(":")[2]!;
    await harness.react("bob", result, "👍");
    await expect.poll(() => host.generations.ratingsOf(generation), { timeout: 10_000 }).toEqual([{ user: harness.idOf("bob"), value: 1 }]);
    await harness.react("bob", result, "⭐");
    await expect.poll(() => host.generations.ratingsOf(generation), { timeout: 10_000 }).toEqual([{ user: harness.idOf("bob"), value: 2 }]);
    await harness.react("bob", result, "⭐", true);
    await expect.poll(() => host.generations.ratingsOf(generation), { timeout: 10_000 }).toEqual([]);
    await harness.press("alice", result, "👎");
    await expect.poll(() => host.generations.ratingsOf(generation), { timeout: 10_000 }).toEqual([{ user: harness.idOf("alice"), value: -1 }]);
  }, 30_000);

  it("🗑 is refused to others and deletes for the requester", async () => {
    const { harness } = setup();
    const result = await waitForPost(harness, isResult);
    const before = await count();
    await harness.press("bob", result, "🗑");
    await waitForPost(harness, (post) => /Only the person who asked/.test(post.text), before);
    expect((await harness.posts()).find((post) => post.ref === result.ref)?.deleted).toBe(false);
    await harness.press("alice", result, "🗑");
    await expect.poll(async () => (await harness.posts()).find((post) => post.ref === result.ref)?.deleted ?? true, { timeout: 10_000 }).toBe(true);
  }, 30_000);

  it("admin commands: politely refused to others with nothing changed, done for admins", async () => {
    const { harness, host } = setup();
    const before = await count();
    await harness.command("alice", "/lora block hexagon shapes");
    const refusal = await waitForPost(harness, (post) => /admins only/.test(post.text), before);
    expect(refusal.text).toMatch(/^Sorry, \/lora block is for the bot's admins only\. Nothing was changed\.$/);
    expect(await host.index.count({ state: "blocked" })).toBe(0);
    await harness.command("admin", "/lora block hexagon shapes");
    await waitForPost(harness, (post) => /blocked \*\*hexagon shapes\*\*|blocked \*hexagon shapes\*/.test(post.text), before);
    expect((await host.index.list({ state: "blocked" })).map((lora) => lora.name)).toEqual(["hexagon shapes"]);
    await harness.command("admin", "/lora unblock hexagon shapes");
    await expect.poll(() => host.index.count({ state: "blocked" }), { timeout: 10_000 }).toBe(0);
    await harness.command("alice", "/pool status");
    await waitForPost(harness, (post) => /Sorry, \/pool status is for the bot's admins only/.test(post.text), before);
    await harness.command("admin", "/pool status");
    await waitForPost(harness, (post) => /Pool.*3 LoRAs/.test(post.text) && /Queue/.test(post.text), before);
    // A LoRA no encoder embedded (a family without one) is counted apart from those found by weights.
    const [hexagon] = await host.index.findByName("hexagon shapes");
    const record = (await host.index.get(hexagon!.id))!;
    await host.index.upsert([{ ...record, encoder_version: "", text_vector: record.vector }]);
    await harness.command("admin", "/pool status");
    await waitForPost(harness, (post) => /Searchable\W+2 by weights, 1 by text only \(no LoRA encoder for their family yet\)/.test(post.text), before);
    await host.index.upsert([record]);

    // /lora add from a URL: refused to others (nothing downloaded), added for admins, then gone again.
    const file = diffusersLora(192, 4, 1);
    let downloads = 0;
    const server = createServer((_request, response) => { downloads += 1; response.writeHead(200, { "content-length": file.length }).end(file); });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/neon-glow.safetensors`;
    try {
      await harness.command("bob", `/lora add url:${url} name:neon glow`);
      await waitForPost(harness, (post) => /^Sorry, \/lora add is for the bot's admins only/.test(post.text), before);
      expect([downloads, await host.index.count({})]).toEqual([0, 3]);
      await harness.command("admin", `/lora add url:${url} name:neon glow`);
      await waitForPost(harness, (post) => /✅ added: \*{1,2}neon glow\*{1,2} `[0-9a-f]{12}` \(diffusers, proving-ground\)/.test(post.text), before, 20_000);
      expect(await host.index.count({})).toBe(4);
      await harness.command("admin", "/lora remove neon glow");
      await expect.poll(() => host.index.count({}), { timeout: 10_000 }).toBe(3);
      // Without name: the file's name from the URL, not the download's temporary one.
      await harness.command("admin", `/lora add ${url}`);
      await waitForPost(harness, (post) => /✅ added: \*{1,2}neon-glow\*{1,2}/.test(post.text), before, 20_000);
      await harness.command("admin", "/lora remove neon-glow");
      await expect.poll(() => host.index.count({}), { timeout: 10_000 }).toBe(3);
    } finally {
      server.close();
    }
  }, 40_000);

  it("bad options and unknown LoRAs get a clear answer; /loras and /lora info answer", async () => {
    const { harness } = setup();
    const before = await count();
    await harness.command("alice", "/imagine a star k:9");
    await waitForPost(harness, (post) => post.text === "k must be at most 5", before);
    await harness.command("alice", "/imagine a star loras:no-such-lora");
    await waitForPost(harness, (post) => /no LoRA called no-such-lora; try \/loras/.test(post.text), before);
    await harness.command("alice", "/loras search:hexagon");
    await waitForPost(harness, (post) => /LoRAs for .*hexagon/.test(post.text) && /✅ hexagon shapes \(0\.\d\d: weights 0\.\d\d · no text\) covers “hexagon”/.test(post.text)
      && /▫️ diagonal stripes/.test(post.text), before);
    await harness.command("alice", "/lora info diagonal stripes");
    await waitForPost(harness, (post) => /diagonal stripes/.test(post.text) && /proving-ground · diffusers/.test(post.text), before);
  }, 30_000);
}
