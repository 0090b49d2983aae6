// One contract, three chats: the web chat, Discord (discord.js against a local fake Discord) and Slack (Bolt
// against signed requests and a local fake Web API) must each pass the same adapter suite.
import { afterAll, beforeAll, describe } from "vitest";
import type { ChatAdapter } from "../src/plugins.js";
import { adapterContract, type Harness } from "./helpers/adapter-contract.js";
import { fakeHost } from "../src/testing/fake-host.js";
import { discordHarness } from "./helpers/harness-discord.js";
import { slackHarness } from "./helpers/harness-slack.js";
import { webHarness } from "./helpers/harness-web.js";

type Setup = (host: Awaited<ReturnType<typeof fakeHost>>) => Promise<{ harness: Harness; adapter: ChatAdapter; stop: () => Promise<void> }>;

const adapters: Array<[string, Setup]> = [
  ["web", webHarness],
  ["Discord", discordHarness],
  ["Slack", slackHarness],
];

describe.each(adapters)("the %s adapter", (_name, start) => {
  let host: Awaited<ReturnType<typeof fakeHost>>;
  let harness: Harness;
  let adapter: ChatAdapter;
  let stop: () => Promise<void>;
  beforeAll(async () => {
    host = await fakeHost({ stepMs: 5 });
    ({ harness, adapter, stop } = await start(host));
  }, 60_000);
  afterAll(async () => {
    await stop?.();
    await host?.stop();
  });
  adapterContract(() => ({ harness, host, adapter }));
});
