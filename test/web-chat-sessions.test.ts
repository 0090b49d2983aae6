// Web chat sessions and what a guest cannot reset by dropping a cookie: sessions are made only where a page needs
// one, expire when idle and are capped in number; the per-minute and per-day limits and the queue's per-user cap
// follow the guest's address (through a proxy only where one is configured); the admin link works once, and the
// session that uses it gets a new id.
import type { IncomingMessage } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatCore } from "../src/bots/core.js";
import { addressKey, ClientAddresses } from "../src/bots/web/request-policy.js";
import { WebChat, type WebChatOptions } from "../src/bots/web/server.js";
import { fakeHost } from "../src/testing/fake-host.js";
import { EventStream, webRequest, type Shown } from "./helpers/web-client.js";

type Host = Awaited<ReturnType<typeof fakeHost>>;

const opened: Array<{ close(): void } | { stop(): Promise<void> }> = [];

async function startChat(host: Host, options: Partial<WebChatOptions> = {}, core = host.core) {
  const chat = new WebChat({ host: "127.0.0.1", port: 0, core, dataDir: host.data, ...options });
  opened.push(chat);
  return { chat, ...(await chat.start()) };
}

interface Guest {
  from: string;
  cookie: string;
  stream?: EventStream;
}

/** A browser at `from` (and behind a proxy, the address the proxy says it has): the page, then its event stream. */
async function guest(url: string, from: string, options: { stream?: boolean; forwardedFor?: string } = {}): Promise<Guest> {
  const headers = options.forwardedFor ? { "x-forwarded-for": options.forwardedFor } : undefined;
  const cookie = (await webRequest(`${url}/`, { from, headers })).cookie!;
  expect(cookie).toBeDefined();
  if (options.stream === false) return { from, cookie };
  const stream = await EventStream.open(url, { cookie, from, headers });
  opened.push(stream);
  return { from, cookie, stream };
}

const post = (url: string, who: Guest, text: string, forwardedFor?: string) => webRequest(`${url}/api/command`, {
  from: who.from, body: { text }, headers: { cookie: who.cookie, origin: url, ...(forwardedFor ? { "x-forwarded-for": forwardedFor } : {}) },
});

/** Type `text` and wait for the bot's answer to it (private, or about its words) to finish in that guest's page. */
async function ask(url: string, who: Guest, text: string, forwardedFor?: string): Promise<Shown> {
  const before = new Set(who.stream!.order);
  const words = text.replace(/^\/\S+\s*/, "");
  expect((await post(url, who, text, forwardedFor)).status).toBe(202);
  return who.stream!.waitFor((message) => !before.has(message.id) && message.author === "bot" && !message.running
    && (message.ephemeral === true || message.text.includes(words)));
}

const isGrid = (message: Shown) => message.buttons?.flat().some((button) => button.label === "U1") === true;

afterAll(async () => {
  for (const thing of opened.reverse()) "close" in thing ? thing.close() : await thing.stop();
});

describe("sessions", () => {
  let host: Host;
  let clock = 1_000_000;
  let chat: Awaited<ReturnType<typeof startChat>>;
  const log: string[] = [];
  beforeAll(async () => {
    host = await fakeHost({ stepMs: 5 });
    chat = await startChat(host, { now: () => clock, sessionIdleMs: 60_000, log: (line) => log.push(line) });
  }, 60_000);

  const alive = async (who: Guest) => (await post(chat.url, who, "/help")).status;

  it("are made for the page, its event stream and the admin link only", async () => {
    const image = "/images/00000000-0000-0000-0000-000000000000/grid.png";
    for (const path of [image, "/api/me", "/no/such/thing", "/favicon.ico"]) {
      expect((await webRequest(`${chat.url}${path}`)).cookie, path).toBeUndefined();
    }
    const cookieless = await webRequest(`${chat.url}/api/command`, { headers: { origin: chat.url }, body: { text: "/help" } });
    expect(cookieless.status).toBe(401);
    expect(cookieless.cookie).toBeUndefined();
    expect(cookieless.text).toMatch(/open the chat page/);
    expect((await webRequest(`${chat.url}/`)).cookie).toMatch(/^autolora_session=[0-9a-f]{32}$/);
  });

  it("expire when idle, unless their page is still open", async () => {
    const idle = await guest(chat.url, "127.0.1.1", { stream: false });
    const open = await guest(chat.url, "127.0.1.2");
    expect([await alive(idle), await alive(open)]).toEqual([202, 202]);
    // Idleness counts from when a session's last command finished (/help's answer follows its 202 by the chat
    // core's acknowledgement window, 20 ms): let it finish before time moves on.
    await new Promise((resolve) => setTimeout(resolve, 300));
    clock += 61_000;
    expect(await alive(idle)).toBe(401);
    expect(await alive(open)).toBe(202);
  });

  it("are capped: a new one pushes out the longest idle one whose page is closed", async () => {
    const capped = await startChat(host, { now: () => clock, maxSessions: 3 });
    const first = await guest(capped.url, "127.0.2.1");
    clock += 1_000;
    const second = await guest(capped.url, "127.0.2.2", { stream: false });
    clock += 1_000;
    const third = await guest(capped.url, "127.0.2.3", { stream: false });
    clock += 1_000;
    const fourth = await guest(capped.url, "127.0.2.4", { stream: false });
    const status = async (who: Guest) => (await post(capped.url, who, "/help")).status;
    expect({ first: await status(first), second: await status(second), third: await status(third), fourth: await status(fourth) })
      .toEqual({ first: 202, second: 401, third: 202, fourth: 202 });
  });

  it("the admin link works once, the next one is logged, and the session that uses it gets a new id", async () => {
    clock += 61_000;
    const before = await guest(chat.url, "127.0.3.1", { stream: false });
    const used = await webRequest(chat.adminUrl, { from: before.from, headers: { cookie: before.cookie } });
    expect(used.status).toBe(303);
    expect(used.cookie).toMatch(/^autolora_session=[0-9a-f]{32}$/);
    expect(used.cookie).not.toBe(before.cookie);
    const me = async (cookie: string) => (await webRequest(`${chat.url}/api/me`, { from: before.from, headers: { cookie } })).text;
    expect(JSON.parse(await me(used.cookie!)).admin).toBe(true);
    expect(JSON.parse(await me(before.cookie)).admin).toBe(false);
    expect(await alive(before)).toBe(401);

    const other = await guest(chat.url, "127.0.3.2", { stream: false });
    const again = await webRequest(chat.adminUrl, { from: other.from, headers: { cookie: other.cookie } });
    expect(again.status).toBe(403);
    expect(again.text).toMatch(/used already.*log/);
    expect(JSON.parse(await me(other.cookie)).admin).toBe(false);
    const next = log.map((line) => /admin link.*?(http:\/\/\S+\/admin\?token=[0-9a-f]+)/.exec(line)?.[1]).filter(Boolean).at(-1)!;
    expect(next).toBeDefined();
    expect(next).not.toBe(chat.adminUrl);
    const promoted = await webRequest(next, { from: other.from, headers: { cookie: other.cookie } });
    expect(promoted.status).toBe(303);
    expect(JSON.parse(await me(promoted.cookie!)).admin).toBe(true);
  });
});

describe("limits follow the guest's address, not the cookie", () => {
  it("a new cookie does not reset the per-minute limit; another address has its own", async () => {
    const host = await fakeHost({ stepMs: 5, chat: { perMinute: 1 } });
    opened.push(host);
    const { url } = await startChat(host);
    const first = await guest(url, "127.0.4.1");
    expect(isGrid(await ask(url, first, "/imagine a red hexagon"))).toBe(true);
    const again = await guest(url, "127.0.4.1");
    expect((await ask(url, again, "/imagine a blue star")).text).toMatch(/at most 1 images a minute/);
    const neighbour = await guest(url, "127.0.4.2");
    expect(isGrid(await ask(url, neighbour, "/imagine a blue star"))).toBe(true);
  }, 40_000);

  it("X-Forwarded-For counts only from a configured proxy", async () => {
    const host = await fakeHost({ stepMs: 5, chat: { perMinute: 1 } });
    opened.push(host);
    const direct = await startChat(host);
    const first = await guest(direct.url, "127.0.5.1", { forwardedFor: "203.0.113.1" });
    expect(isGrid(await ask(direct.url, first, "/imagine a red hexagon", "203.0.113.1"))).toBe(true);
    const spoofed = await guest(direct.url, "127.0.5.1", { forwardedFor: "203.0.113.2" });
    expect((await ask(direct.url, spoofed, "/imagine a blue star", "203.0.113.2")).text).toMatch(/at most 1 images a minute/);

    const proxied = await startChat(host, { trustedProxies: ["127.0.6.0/24"] });
    const proxy = "127.0.6.1";
    const one = await guest(proxied.url, proxy, { forwardedFor: "203.0.113.3" });
    expect(isGrid(await ask(proxied.url, one, "/imagine a red hexagon", "203.0.113.3"))).toBe(true);
    const two = await guest(proxied.url, proxy, { forwardedFor: "203.0.113.4" });
    expect(isGrid(await ask(proxied.url, two, "/imagine a red hexagon", "203.0.113.4"))).toBe(true);
    // A client's own X-Forwarded-For ahead of the proxy's entry changes nothing: the proxy's last entry counts.
    const forged = await guest(proxied.url, proxy, { forwardedFor: "198.51.100.9, 203.0.113.3" });
    expect((await ask(proxied.url, forged, "/imagine a blue star", "198.51.100.9, 203.0.113.3")).text).toMatch(/at most 1 images a minute/);
  }, 60_000);

  it("an IPv6 guest is their /64, an IPv4 guest on an IPv6 socket their IPv4 address, and the key hides both", () => {
    const secret = Buffer.alloc(32, 7);
    const key = (address: string) => addressKey(address, secret);
    expect(key("2001:db8:1:2::1")).toBe(key("2001:0db8:0001:0002:ffff:eeee:dddd:9"));
    expect(key("2001:db8:1:3::1")).not.toBe(key("2001:db8:1:2::1"));
    expect(key("2001:db8:1:2::1")).not.toMatch(/2001|db8/);
    const from = (remoteAddress: string, forwarded?: string) =>
      ({ socket: { remoteAddress }, headers: forwarded ? { "x-forwarded-for": forwarded } : {} }) as unknown as IncomingMessage;
    expect(new ClientAddresses([]).of(from("::ffff:192.0.2.7"))).toBe("192.0.2.7");
    expect(new ClientAddresses([]).of(from("192.0.2.7", "203.0.113.1"))).toBe("192.0.2.7");
    const proxies = new ClientAddresses(["fd00::/8", "10.0.0.1"]);
    expect(proxies.of(from("fd00::5", "203.0.113.1, 10.0.0.1"))).toBe("203.0.113.1");
    expect(proxies.of(from("fd00::5", "not-an-address"))).toBe("fd00::5");
    expect(() => new ClientAddresses(["10.0.0.0/33"])).toThrow(/web\.trusted_proxies/);
  });

  it("the day's count is rebuilt from stored generations after a restart", async () => {
    const host = await fakeHost({ stepMs: 5, chat: { perDay: 1 } });
    opened.push(host);
    const before = await startChat(host);
    const first = await guest(before.url, "127.0.7.1");
    expect(isGrid(await ask(before.url, first, "/imagine a red hexagon"))).toBe(true);
    await before.chat.stop();
    // A restart: a fresh core (its limiter starts empty) and a fresh web chat on the same data folder.
    const after = await startChat(host, {}, new ChatCore(host.core.context));
    const returning = await guest(after.url, "127.0.7.1");
    expect((await ask(after.url, returning, "/imagine a blue star")).text).toMatch(/today's 1 images/);
  }, 40_000);

  it("the queue's per-user cap counts the address's jobs, whichever cookie sent them", async () => {
    const host = await fakeHost({ stepMs: 1_000, queue: { perUser: 1, global: 20 } });
    opened.push(host);
    const { url } = await startChat(host);
    const first = await guest(url, "127.0.8.1");
    expect((await post(url, first, "/imagine a red hexagon")).status).toBe(202);
    await first.stream!.waitFor((message) => /a red hexagon/.test(message.text) && message.author === "bot");
    const again = await guest(url, "127.0.8.1");
    expect((await ask(url, again, "/imagine a blue star")).text).toMatch(/you already have 1 job queued or running/);
  }, 40_000);
});
