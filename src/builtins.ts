// The built-in plugin: the commands every chat offers and the local web chat adapter, registered through the
// same Plugin interface as any external plugin.
import { BUILTIN_COMMANDS } from "./bots/commands.js";
import { WebChat } from "./bots/web/server.js";
import type { Plugin } from "./plugins.js";

export const builtinPlugin: Plugin = {
  name: "builtin",
  setup(api) {
    for (const command of BUILTIN_COMMANDS) api.addCommand(command);
    api.addChatAdapter({
      name: "web",
      create: ({ config, context, generations, dataDir, log }) => config.web.enabled
        ? new WebChat({ host: config.web.host, port: config.web.port, context, generations, dataDir, log })
        : undefined,
    });
  },
};
