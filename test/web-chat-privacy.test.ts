// The web chat keeps what is private private: what one guest types reaches the others only where the bot answers
// in public, only the configured host names are served (DNS rebinding), every response carries the headers that
// keep the page out of frames and foreign scripts out of the page, and a long prompt gets the command layer's answer.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebChat } from "../src/bots/web/server.js";
import { fakeHost } from "../src/testing/fake-host.js";
import { EventStream, webRequest, type Shown } from "./helpers/web-client.js";

let host: Awaited<ReturnType<typeof fakeHost>>;
let chat: WebChat;
let url: string;
let adminUrl: string;
const streams: EventStream[] = [];

interface Guest {
  from: string;
  cookie: string;
  stream: EventStream;
}

/** A browser at `from`: loads the page (which gives it a session) and opens the event stream. */
async function guest(from: string, admin = false): Promise<Guest> {
  let cookie = (await webRequest(`${url}/`, { from })).cookie!;
  if (admin) cookie = (await webRequest(adminUrl, { from, headers: { cookie } })).cookie ?? cookie;
  const stream = await EventStream.open(url, { cookie, from });
  streams.push(stream);
  return { from, cookie, stream };
}

const post = (who: Guest, text: string) =>
  webRequest(`${url}/api/command`, { from: who.from, headers: { cookie: who.cookie, origin: url }, body: { text } });

/** Type `text` as `who` and wait for the bot's answer to it (private, or about its words) to finish in that guest's page. */
async function ask(who: Guest, text: string): Promise<Shown> {
  const before = new Set(who.stream.order);
  const words = text.replace(/^\/\S+\s*/, "");
  expect((await post(who, text)).status).toBe(202);
  return who.stream.waitFor((message) => !before.has(message.id) && message.author === "bot" && !message.running
    && (message.ephemeral === true || message.text.includes(words)));
}

beforeAll(async () => {
  host = await fakeHost({ stepMs: 5 });
  chat = new WebChat({ host: "127.0.0.1", port: 0, core: host.core, dataDir: host.data });
  ({ url, adminUrl } = await chat.start());
}, 60_000);

afterAll(async () => {
  for (const stream of streams) stream.close();
  await chat?.stop();
  await host?.stop();
});

describe("what one guest types", () => {
  it("stays with that guest when the answer is private; the echo of a public /imagine reaches everyone", async () => {
    const alice = await guest("127.0.0.2");
    const bob = await guest("127.0.0.3");
    const admin = await guest("127.0.0.4", true);
    await ask(admin, "/lora add url:https://127.0.0.1:9/neon.safetensors?token=SECRET-admin-url");
    await ask(admin, "/lora block SECRET-admin-block");
    await ask(alice, "/lora info SECRET-private-command");
    await ask(alice, "/imagine a star k:9 SECRET-refused-option");
    await ask(alice, "/nonsense SECRET-unknown-command");
    await ask(alice, "/imagine a star --bogus SECRET-unparsed");
    await ask(bob, "/lora block SECRET-not-an-admin");
    const result = await ask(alice, "/imagine a red hexagon PUBLIC-prompt");
    expect(result.buttons?.flat().map((button) => button.label)).toContain("U1");

    // Everything above reached bob's page before alice's /imagine result did (one stream, in order).
    await bob.stream.waitFor((message) => message.id === result.id && !message.running);
    const echo = (stream: EventStream) => stream.list().filter((message) => message.author === "you").map((message) => message.text);
    expect(echo(bob.stream)).toEqual(expect.arrayContaining([expect.stringMatching(/: \/imagine a red hexagon PUBLIC-prompt$/)]));
    expect(bob.stream.raw).not.toMatch(/SECRET-(admin|private|refused|unknown|unparsed)/);
    expect(alice.stream.raw).not.toMatch(/SECRET-(admin|not-an-admin)/);
    expect(admin.stream.raw).not.toMatch(/SECRET-(private|refused|unknown|unparsed|not-an-admin)/);
    // Each sees their own lines and answers.
    expect(echo(alice.stream).join("\n")).toMatch(/SECRET-private-command[^]*SECRET-refused-option[^]*SECRET-unknown-command[^]*SECRET-unparsed/);
    expect(echo(admin.stream).join("\n")).toMatch(/SECRET-admin-url[^]*SECRET-admin-block/);
    expect(alice.stream.list().some((message) => message.author === "bot" && message.text === "k must be at most 5")).toBe(true);

    // A page opened later is shown the room's history: the public lines only.
    const later = await guest("127.0.0.5");
    await later.stream.waitFor((message) => message.id === result.id);
    expect(later.stream.raw).toMatch(/PUBLIC-prompt/);
    expect(later.stream.raw).not.toMatch(/SECRET/);
  }, 40_000);

  it("a prompt over 2 000 characters gets the command layer's answer about its length", async () => {
    const alice = await guest("127.0.0.6");
    const prompt = "a red hexagon ".repeat(200).trim();
    expect(prompt.length).toBeGreaterThan(2000);
    const answer = await ask(alice, `/imagine ${prompt}`);
    expect(answer.error).toBe(true);
    expect(answer.text).toMatch(/prompt/);
    expect(answer.text).toMatch(/1[ ,]?000/);
  }, 20_000);
});

describe("the host names it answers to", () => {
  const hostHeader = (name: string) => ({ host: name });

  it("refuses a Host it was not configured for, on every route, and serves its own names", async () => {
    const port = new URL(url).port;
    const cookie = (await webRequest(`${url}/`)).cookie!;
    const foreign = `rebind.example:${port}`;
    const answers = await Promise.all([
      webRequest(`${url}/`, { headers: hostHeader(foreign) }),
      webRequest(`${url}/api/events`, { headers: { ...hostHeader(foreign), cookie } }),
      webRequest(`${url}/api/me`, { headers: { ...hostHeader(foreign), cookie } }),
      webRequest(`${url}/images/00000000-0000-0000-0000-000000000000/grid.png`, { headers: hostHeader(foreign) }),
      webRequest(`${url}/admin?token=whatever`, { headers: hostHeader(foreign) }),
      webRequest(`${url}/api/command`, { headers: { ...hostHeader(foreign), cookie, origin: `http://${foreign}` }, body: { text: "/help" } }),
    ]);
    for (const answer of answers) {
      expect(answer.status).toBe(421);
      expect(answer.text).toMatch(/web\.allowed_hosts/);
      expect(answer.cookie).toBeUndefined();
    }
    for (const name of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`, `[::1]:${port}`]) {
      expect((await webRequest(`${url}/`, { headers: hostHeader(name) })).status, name).toBe(200);
    }
    expect((await webRequest(`${url}/`, { headers: hostHeader("127.0.0.1:1") })).status).toBe(421);
  });

  it("also serves the names listed in web.allowed_hosts (a reverse proxy's public name)", async () => {
    const proxied = new WebChat({ host: "127.0.0.1", port: 0, core: host.core, dataDir: host.data, allowedHosts: ["chat.example.org"] });
    const { url: proxiedUrl } = await proxied.start();
    try {
      expect((await webRequest(`${proxiedUrl}/`, { headers: hostHeader("chat.example.org") })).status).toBe(200);
      expect((await webRequest(`${proxiedUrl}/`, { headers: hostHeader("chat.example.org:443") })).status).toBe(200);
      expect((await webRequest(`${proxiedUrl}/`, { headers: hostHeader("other.example.org") })).status).toBe(421);
    } finally {
      await proxied.stop();
    }
  });
});

describe("the headers on every response", () => {
  it("forbid framing, sniffing, referrers and any script but the chat's own", async () => {
    const cookie = (await webRequest(`${url}/`)).cookie!;
    const responses = {
      page: await webRequest(`${url}/`),
      me: await webRequest(`${url}/api/me`, { headers: { cookie } }),
      missing: await webRequest(`${url}/no/such/thing`),
      image: await webRequest(`${url}/images/00000000-0000-0000-0000-000000000000/grid.png`),
      refused: await webRequest(`${url}/`, { headers: { host: "rebind.example" } }),
      forged: await webRequest(`${url}/api/command`, { headers: { cookie, origin: "http://evil.example" }, body: { text: "/help" } }),
    };
    const events = await EventStream.open(url, { cookie });
    streams.push(events);
    for (const [name, response] of Object.entries({ ...responses, events })) {
      const policy = String(response.headers["content-security-policy"]);
      expect(policy, name).toMatch(/frame-ancestors 'none'/);
      expect(policy, name).toMatch(/default-src 'none'/);
      expect(policy, name).toMatch(/script-src 'self'(;|$)/);
      expect(policy, name).not.toMatch(/unsafe-inline|unsafe-eval/);
      expect(response.headers["x-frame-options"], name).toBe("DENY");
      expect(response.headers["x-content-type-options"], name).toBe("nosniff");
      expect(response.headers["referrer-policy"], name).toBe("no-referrer");
    }
    // The page carries no script or style of its own: each comes from a file the policy allows.
    const page = responses.page.text;
    expect(page).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(page).not.toMatch(/<style|\sstyle=|\son[a-z]+=/);
    for (const [, path] of page.matchAll(/(?:src|href)="(\/[^"]+)"/g)) {
      const asset = await webRequest(`${url}${path}`);
      expect(asset.status, path).toBe(200);
      expect(asset.headers["content-type"], path).toMatch(/^(text\/javascript|text\/css)/);
    }
  });
});
