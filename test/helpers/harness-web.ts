// The adapter contract's harness for the web chat: each user is a browser session (cookie), speaking the page's
// HTTP API and reading its Server-Sent Events; the admin is the session that opened the admin link.
import { WebChat } from "../../src/bots/web/server.js";
import type { FakeHost, Harness, Post, User } from "./adapter-contract.js";

interface Shown {
  id: string;
  author: string;
  text: string;
  image?: string;
  buttons?: Array<Array<{ id: string; label: string }>>;
  ephemeral?: boolean;
  deleted?: boolean;
}

interface Session {
  cookie: string;
  id: string;
  messages: Map<string, Shown>;
  stream: AbortController;
}

export async function webHarness(host: FakeHost): Promise<{ harness: Harness; stop: () => Promise<void> }> {
  const chat = new WebChat({ host: "127.0.0.1", port: 0, core: host.core, dataDir: host.data, adminToken: "contract-admin-token" });
  const { url } = await chat.start();
  const sessions = new Map<User, Session>();
  const order: Array<{ user: User; id: string }> = [];
  const history = new Map<string, string[]>();

  const open = async (user: User): Promise<Session> => {
    const existing = sessions.get(user);
    if (existing) return existing;
    const cookie = (await fetch(`${url}/`)).headers.get("set-cookie")!.split(";")[0]!;
    if (user === "admin") await fetch(`${url}/admin?token=contract-admin-token`, { headers: { cookie }, redirect: "manual" });
    const me = await (await fetch(`${url}/api/me`, { headers: { cookie } })).json() as { id: string };
    const session: Session = { cookie, id: me.id, messages: new Map(), stream: new AbortController() };
    sessions.set(user, session);
    void read(user, session);
    return session;
  };
  const read = async (user: User, session: Session) => {
    const response = await fetch(`${url}/api/events`, { headers: { cookie: session.cookie }, signal: session.stream.signal });
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for await (const chunk of response.body!) {
        buffer += decoder.decode(chunk as Uint8Array, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (!event.startsWith("data: ")) continue;
          const message = JSON.parse(event.slice(6)) as Shown;
          if (!order.some((entry) => entry.id === message.id)) order.push({ user, id: message.id });
          const texts = history.get(message.id) ?? [];
          if (texts.at(-1) !== message.text) texts.push(message.text);
          history.set(message.id, texts);
          session.messages.set(message.id, message);
        }
      }
    } catch {
      // the stream was closed
    }
  };
  const post = async (user: User, path: string, body: unknown) => {
    const session = await open(user);
    const response = await fetch(`${url}${path}`, {
      method: "POST", headers: { cookie: session.cookie, origin: url, "content-type": "application/json" }, body: JSON.stringify(body),
    });
    return response;
  };
  const imageOf = async (image: string | undefined) => {
    if (!image) return undefined;
    if (image.startsWith("data:")) return Buffer.from(image.split(",")[1]!, "base64");
    const response = await fetch(`${url}${image}`);
    return response.ok ? Buffer.from(await response.arrayBuffer()) : undefined;
  };

  const harness: Harness = {
    async command(user, line) {
      const started = performance.now();
      const response = await post(user, "/api/command", { text: line });
      if (response.status !== 202) throw new Error(`the web chat answered ${response.status}`);
      return { ackMs: performance.now() - started };
    },
    async press(user, target, label) {
      const button = target.buttons.find((entry) => entry.label === label)!;
      const response = await post(user, "/api/press", { message: target.ref, button: button.id });
      if (response.status !== 202) throw new Error(`press answered ${response.status}`);
    },
    async react(user, target, emoji, removed) {
      const response = await post(user, "/api/react", { message: target.ref, emoji, removed });
      if (!response.ok) throw new Error(`react answered ${response.status}`);
    },
    async posts() {
      const posts: Post[] = [];
      for (const { id } of order) {
        // The freshest copy: any session that sees the message gets every update of it.
        const message = [...sessions.values()].map((session) => session.messages.get(id)).find(Boolean)!;
        if (message.author !== "bot") continue;
        posts.push({
          ref: message.id, text: message.text, buttons: (message.buttons ?? []).flat(), image: await imageOf(message.image),
          ephemeral: message.ephemeral === true, deleted: message.deleted === true, history: history.get(id),
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
    harness,
    stop: async () => {
      for (const session of sessions.values()) session.stream.abort();
      await chat.stop();
    },
  };
}
