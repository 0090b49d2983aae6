// The config's `chat` section and `admins` list as the command layer's settings.
import type { Config } from "../config/schema.js";
import type { ChatSettings } from "./commands.js";

export function chatSettings(config: Config): ChatSettings {
  return {
    admins: config.admins, reactions: config.chat.reactions, perMinute: config.chat.per_minute, perDay: config.chat.per_day,
    maxPromptChars: config.chat.max_prompt_chars, progressIntervalMs: config.chat.progress_interval_ms,
  };
}
