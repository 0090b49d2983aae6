// The built-in plugin: the commands every chat offers and the three chat adapters (web, Discord, Slack),
// and the crawl sources (Civitai, the Hugging Face Hub, a local folder), registered through the same Plugin
// interface as any external plugin. Each adapter turns itself on from the config and the environment: the web
// chat by `web.enabled`, Discord by DISCORD_TOKEN, Slack by SLACK_BOT_TOKEN; `scheduler.sources` picks sources.
import { BUILTIN_COMMANDS } from "./bots/builtin-commands.js";
import { discordAdapterFactory } from "./bots/discord/adapter.js";
import { slackAdapterFactory } from "./bots/slack/adapter.js";
import { WebChat } from "./bots/web/server.js";
import type { Plugin } from "./plugins.js";
import { CivitaiSource } from "./scheduler/sources/civitai.js";
import { HuggingFaceSource } from "./scheduler/sources/huggingface.js";
import { LocalFolderSource } from "./scheduler/sources/local-folder.js";

export const builtinPlugin: Plugin = {
  name: "builtin",
  setup(api) {
    for (const command of BUILTIN_COMMANDS) api.addCommand(command);
    api.addChatAdapter({
      name: "web",
      create: ({ config, core, dataDir, log }) => config.web.enabled
        ? new WebChat({
          host: config.web.host, port: config.web.port, core, dataDir, log,
          allowedHosts: config.web.allowed_hosts, trustedProxies: config.web.trusted_proxies,
          sessionIdleMs: config.web.session_idle_minutes * 60_000, maxSessions: config.web.max_sessions,
        })
        : undefined,
    });
    api.addChatAdapter(discordAdapterFactory);
    api.addChatAdapter(slackAdapterFactory);
    api.addCrawlSource({
      name: "civitai",
      create: ({ config, secrets, baseUrl }) => new CivitaiSource({
        baseUrl: baseUrl ?? config.scheduler.civitai.base_url, baseModels: config.scheduler.civitai.base_models,
        sort: config.scheduler.civitai.sort, pageSize: config.scheduler.civitai.page_size, apiKey: secrets.get("civitaiApiKey"),
      }),
    });
    api.addCrawlSource({
      name: "huggingface",
      create: ({ config, secrets, baseUrl }) => new HuggingFaceSource({
        baseUrl: baseUrl ?? config.scheduler.huggingface.base_url, baseModel: config.scheduler.huggingface.base_model,
        pageSize: config.scheduler.huggingface.page_size, token: secrets.get("huggingfaceToken"),
      }),
    });
    api.addCrawlSource({ name: "local", create: ({ config }) => new LocalFolderSource({ folder: config.scheduler.local.folder }) });
  },
};
