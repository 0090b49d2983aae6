// The adapter contract's harness for the web chat: each user is a browser on a machine of its own (its own
// loopback address, since the chat counts guests by address), speaking the page's HTTP API and reading its
// Server-Sent Events; the admin is the browser that opened the admin link (and got a new session cookie by it).
import { WebChat } from "../../src/bots/web/server.js";
import type { FakeHost, Harness, Post, User } from "./adapter-contract.js";
import { EventStream, webRequest, type Shown } from "./web-client.js";

const ADDRESSES: Record<User, string> = { alice: "127.0.0.11", bob: "127.0.0.12", admin: "127.0.0.13" };

interface Session {
  from: string;
  cookie: string;
  id: string;
  stream: EventStream;
}

export async function webHarness(host: FakeHost): Promise<{ harness: Harness; adapter: WebChat; stop: () => Promise<void> }> {
  const chat = new WebChat({ host: "127.0.0.1", port: 0, core: host.core, dataDir: host.data, adminToken: "contract-admin-token" });
  const { url, adminUrl } = await chat.start();
  const sessions = new Map<User, Session>();
  const order: string[] = [];

  const open = async (user: User): Promise<Session> => {
    const from = ADDRESSES[user];
    let cookie = (await webRequest(`${url}/`, { from })).cookie!;
    if (user === "admin") cookie = (await webRequest(adminUrl, { from, headers: { cookie } })).cookie!;
    const me = JSON.parse((await webRequest(`${url}/api/me`, { from, headers: { cookie } })).text) as { id: string };
    const stream = await EventStream.open(url, {
      cookie, from, onMessage: (message) => { if (!order.includes(message.id)) order.push(message.id); },
    });
    const session: Session = { from, cookie, id: me.id, stream };
    sessions.set(user, session);
    return session;
  };
  const post = async (user: User, path: string, body: unknown) => {
    const session = sessions.get(user)!;
    return webRequest(`${url}${path}`, { from: session.from, headers: { cookie: session.cookie, origin: url }, body });
  };
  const imageOf = async (image: string | undefined) => {
    if (!image) return undefined;
    if (image.startsWith("data:")) return Buffer.from(image.split(",")[1]!, "base64");
    const response = await webRequest(`${url}${image}`);
    return response.status === 200 ? response.body : undefined;
  };

  const harness: Harness = {
    async command(user, line) {
      const started = performance.now();
      const response = await post(user, "/api/command", { text: line });
      if (response.status !== 202) throw new Error(`the web chat answered ${response.status}: ${response.text}`);
      return { ackMs: performance.now() - started };
    },
    async press(user, target, label) {
      const button = target.buttons.find((entry) => entry.label === label)!;
      const response = await post(user, "/api/press", { message: target.ref, button: button.id });
      if (response.status !== 202) throw new Error(`press answered ${response.status}: ${response.text}`);
    },
    async react(user, target, emoji, removed) {
      const response = await post(user, "/api/react", { message: target.ref, emoji, removed });
      if (response.status !== 200) throw new Error(`react answered ${response.status}: ${response.text}`);
    },
    async posts() {
      const posts: Post[] = [];
      for (const id of order) {
        // The freshest copy: any session that sees the message gets every update of it.
        const session = [...sessions.values()].find((entry) => entry.stream.messages.has(id))!;
        const message: Shown = session.stream.messages.get(id)!;
        if (message.author !== "bot") continue;
        posts.push({
          ref: message.id, text: message.text, buttons: (message.buttons ?? []).flat(), image: await imageOf(message.image),
          ephemeral: message.ephemeral === true, deleted: message.deleted === true, history: session.stream.history.get(id),
        });
      }
      return posts;
    },
    idOf(user) {
      const session = sessions.get(user);
      if (!session) throw new Error(`${user} has not spoken yet`);
      return session.id;
    },
  };
  for (const user of ["alice", "bob", "admin"] as const) await open(user);
  return {
    harness, adapter: chat,
    stop: async () => {
      for (const session of sessions.values()) session.stream.close();
      await chat.stop();
    },
  };
}
