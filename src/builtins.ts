// The built-in plugin: the commands every chat offers and the three chat adapters (web, Discord, Slack),
// registered through the same Plugin interface as any external plugin. Each adapter turns itself on from the
// config and the environment: the web chat by `web.enabled`, Discord by DISCORD_TOKEN, Slack by SLACK_BOT_TOKEN.
import { BUILTIN_COMMANDS } from "./bots/builtin-commands.js";
import { discordAdapterFactory } from "./bots/discord/adapter.js";
import { slackAdapterFactory } from "./bots/slack/adapter.js";
import { WebChat } from "./bots/web/server.js";
import type { Plugin } from "./plugins.js";

export const builtinPlugin: Plugin = {
  name: "builtin",
  setup(api) {
    for (const command of BUILTIN_COMMANDS) api.addCommand(command);
    api.addChatAdapter({
      name: "web",
      create: ({ config, core, dataDir, log }) => config.web.enabled
        ? new WebChat({ host: config.web.host, port: config.web.port, core, dataDir, log })
        : undefined,
    });
    api.addChatAdapter(discordAdapterFactory);
    api.addChatAdapter(slackAdapterFactory);
  },
};
