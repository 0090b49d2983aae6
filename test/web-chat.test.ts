// The web chat in a real browser (Debian chromium through playwright-core), with its Content-Security-Policy in
// force: type /imagine, watch it work, see the grid and the LoRAs used, rate it; admin commands only after the
// admin link.
import { existsSync } from "node:fs";
import { chromium, type Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebChat } from "../src/bots/web/server.js";
import { fakeHost } from "../src/testing/fake-host.js";

const CHROMIUM = "/usr/bin/chromium";
let host: Awaited<ReturnType<typeof fakeHost>>;
let chat: WebChat;
let urls: { url: string; adminUrl: string };
let browser: Browser;

beforeAll(async () => {
  expect(existsSync(CHROMIUM), "install Debian's chromium (apt-get install chromium); .ci/run does").toBe(true);
  host = await fakeHost();
  chat = new WebChat({ host: "127.0.0.1", port: 0, core: host.core, dataDir: host.data });
  urls = await chat.start();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-background-networking"] });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await chat?.stop();
  await host?.stop();
});

describe("web chat", () => {
  it("answers /imagine with the grid, the LoRAs used and rating buttons", async () => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (error) => errors.push(error.message));
    // A Content-Security-Policy violation (an inline script or style, a foreign source) is a console error.
    page.on("console", (message) => { if (message.type() === "error" && !/404/.test(message.text())) errors.push(message.text()); });
    await page.goto(urls.url);
    await page.getByTestId("input").fill("/imagine a red hexagon with diagonal stripes");
    await page.getByTestId("input").press("Enter");
    const grid = page.getByTestId("grid");
    await grid.waitFor({ timeout: 30_000 });
    expect(await grid.evaluate((img) => { const image = img as unknown as { complete: boolean; naturalWidth: number }; return image.complete && image.naturalWidth > 0; })).toBe(true);
    const caption = await page.locator("[data-testid=message]", { has: grid }).getByTestId("text").textContent();
    expect(caption).toMatch(/hexagon shapes \(0\.\d\d\)/);
    expect(caption).toMatch(/diagonal stripes \(0\.\d\d\)/);
    await page.getByTestId("button-👍").last().click();
    await expect.poll(async () => (await host.generations.ratingsByLora()).length).toBe(2);
    await page.getByTestId("button-U1").last().click();
    await page.getByTestId("image").last().waitFor({ timeout: 10_000 });
    expect(errors, "the page's script runs, within its Content-Security-Policy, without errors").toEqual([]);
    await page.close();
  }, 60_000);

  it("shows an error for a bad command and keeps /lora for admins", async () => {
    const page = await browser.newPage();
    await page.goto(urls.url);
    const send = async (text: string) => {
      await page.getByTestId("input").fill(text);
      await page.getByTestId("input").press("Enter");
    };
    await send("/imagine a star --fusion magic");
    await expect.poll(() => page.locator(".error").last().textContent()).toMatch(/^fusion must be one of direct, dare, klora, gated$/);
    await send("/lora block 1111111111");
    await expect.poll(() => page.locator(".error").last().textContent()).toBe("Sorry, /lora block is for the bot's admins only. Nothing was changed.");
    await page.goto(urls.url.replace(/\/?$/, "/admin?token=wrong"));
    await page.goto(urls.adminUrl);
    await expect.poll(() => page.getByTestId("me").textContent()).toMatch(/\(admin\)$/);
    await send("/lora block 1111111111");
    await expect.poll(() => page.locator(".text").last().textContent()).toMatch(/^⛔ blocked hexagon shapes/);
    expect((await host.index.list({ state: "blocked" })).map((lora) => lora.name)).toEqual(["hexagon shapes"]);
    await page.close();
  }, 60_000);

  it("refuses cross-site posts and unknown image paths", async () => {
    const forged = await fetch(`${urls.url}/api/command`, {
      method: "POST", headers: { "content-type": "application/json", origin: "http://evil.example" }, body: JSON.stringify({ text: "/help" }),
    });
    expect(forged.status).toBe(403);
    expect((await fetch(`${urls.url}/images/../../etc/passwd`)).status).toBe(404);
  });
});
