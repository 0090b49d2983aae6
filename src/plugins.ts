// The plugin host: one `Plugin` interface through which chat adapters, commands, crawl sources and image
// post-processors are contributed. The built-ins register through it too; `plugins: [...]` in the config adds
// local modules (paths) or npm packages, each exporting a Plugin as its default (or `plugin`) export.
import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { ChatCommand, CommandContext } from "./bots/commands.js";
import type { ChatCore, MessageHandle } from "./bots/core.js";
import type { Config } from "./config/schema.js";
import type { Secrets } from "./config/secrets.js";
import type { GenerationStore } from "./pipeline/generations.js";
import type { CrawlSource } from "./scheduler/source.js";
import type { GenerationMetadata } from "./pipeline/images.js";

/** A chat platform the bot talks on (web chat, Discord, Slack, …). */
export interface ChatAdapter {
  name: string;
  /** Connect or listen; may resolve to details for the caller (the web chat's URLs). */
  start(): Promise<unknown>;
  stop(): Promise<void>;
  /** A message this adapter posted before a restart, from the `address` its handle gave; undefined if the
   *  address is not one of its own. Without it, jobs accepted here are not taken up again after a restart. */
  reopen?(address: unknown): MessageHandle | undefined;
}

export interface ChatAdapterEnvironment {
  /** The shared conversation engine: adapters hand it commands, buttons and reactions. */
  core: ChatCore;
  context: CommandContext;
  secrets: Secrets;
  generations: GenerationStore;
  dataDir: string;
  config: Config;
  log: (line: string) => void;
}

export interface ChatAdapterFactory {
  name: string;
  /** Undefined when the adapter is not configured (e.g. no token): it is then skipped, with a log line. */
  create(environment: ChatAdapterEnvironment): ChatAdapter | undefined;
}

export type { CrawlCandidate, CrawlPage, CrawlSource } from "./scheduler/source.js";

export interface CrawlSourceFactory {
  /** The name `scheduler.sources` uses. */
  name: string;
  /** The source as configured; `baseUrl` replaces the configured one (`autolora crawl --base-url`). */
  create(environment: { config: Config; secrets: Secrets; baseUrl?: string }): CrawlSource;
}

/** Changes each generated PNG before the grid is made (watermark, upscale, …). */
export type PostProcessor = (image: Buffer, metadata: GenerationMetadata) => Promise<Buffer>;

export interface PluginApi {
  config: Config;
  log: (line: string) => void;
  addCommand(command: ChatCommand): void;
  addChatAdapter(factory: ChatAdapterFactory): void;
  addCrawlSource(factory: CrawlSourceFactory): void;
  addPostProcessor(name: string, processor: PostProcessor): void;
}

export interface Plugin {
  name: string;
  setup(api: PluginApi): void | Promise<void>;
}

/** What the plugins, built-ins first, contributed. */
export class PluginRegistry {
  readonly commands: ChatCommand[] = [];
  readonly chatAdapters: ChatAdapterFactory[] = [];
  readonly crawlSources: CrawlSourceFactory[] = [];
  readonly postProcessors: Array<{ name: string; run: PostProcessor }> = [];
  readonly loaded: string[] = [];

  constructor(private readonly config: Config, private readonly log: (line: string) => void) {}

  async use(plugin: Plugin, origin = plugin.name): Promise<void> {
    if (typeof plugin?.name !== "string" || typeof plugin.setup !== "function") {
      throw new Error(`plugin ${origin} must export { name: string, setup(api) } as its default or \`plugin\` export`);
    }
    const api: PluginApi = {
      config: this.config,
      log: (line) => this.log(`[${plugin.name}] ${line}`),
      addCommand: (command) => this.commands.push(command),
      addChatAdapter: (factory) => this.chatAdapters.push(factory),
      addCrawlSource: (factory) => this.crawlSources.push(factory),
      addPostProcessor: (name, run) => this.postProcessors.push({ name, run }),
    };
    try {
      await plugin.setup(api);
    } catch (error) {
      throw new Error(`plugin ${origin} failed to set up: ${error instanceof Error ? error.message : String(error)}`);
    }
    this.loaded.push(plugin.name);
  }

  /** Import each configured plugin (a path relative to `cwd`, or an npm package name) and set it up. */
  async load(specifiers: string[], cwd = process.cwd()): Promise<void> {
    for (const specifier of specifiers) {
      const isPath = specifier.startsWith(".") || isAbsolute(specifier);
      let module: { default?: Plugin; plugin?: Plugin };
      try {
        module = await import(isPath ? pathToFileURL(resolve(cwd, specifier)).href : specifier) as typeof module;
      } catch (error) {
        throw new Error(`cannot load plugin ${specifier}: ${error instanceof Error ? error.message.split("\n")[0] : String(error)}`);
      }
      await this.use((module.default ?? module.plugin)!, specifier);
    }
  }
}
