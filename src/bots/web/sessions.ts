// The web chat's browser sessions: who may see which private message, cancel which job, and who opened the
// admin link. A session ends after a spell of idleness, and there are at most `max` of them, so a flood of
// cookie-less requests cannot grow memory without bound; an open page (event stream) or a running job keeps one.
import { randomBytes } from "node:crypto";
import type { ServerResponse } from "node:http";

export interface Session {
  /** The cookie's value: 32 hex digits. */
  id: string;
  /** Opened the admin link. */
  admin: boolean;
  /** The session's open event streams (pages). */
  clients: Set<ServerResponse>;
  /** Commands and button presses still running for it. */
  running: number;
  lastSeen: number;
}

export interface SessionOptions {
  /** A session with no open page and nothing running ends after this long without a request. */
  idleMs: number;
  /** The most sessions kept; a new one beyond it pushes out the longest idle. */
  max: number;
  now: () => number;
  /** Told of every session that ends, to forget what only it could see. */
  onEnd: (session: Session) => void;
}

export class Sessions {
  private readonly sessions = new Map<string, Session>();

  constructor(private readonly options: SessionOptions) {}

  /** The live session with this id, marked as just seen; undefined if there is none (or it has expired). */
  find(id: string | undefined): Session | undefined {
    const session = id === undefined ? undefined : this.sessions.get(id);
    if (!session) return undefined;
    if (this.expired(session, this.options.now())) {
      this.end(session);
      return undefined;
    }
    session.lastSeen = this.options.now();
    return session;
  }

  /** Count now as the session's last activity (a page closed, a job ended). */
  touch(session: Session): void {
    session.lastSeen = this.options.now();
  }

  create(): Session {
    const now = this.options.now();
    for (const session of this.sessions.values()) if (this.expired(session, now)) this.end(session);
    if (this.sessions.size >= this.options.max) {
      // The longest idle without a page or a job goes; only if every session has one does the longest idle of all.
      const byIdleness = [...this.sessions.values()].sort((a, b) => a.lastSeen - b.lastSeen);
      this.end(byIdleness.find((session) => session.clients.size === 0 && session.running === 0) ?? byIdleness[0]!);
    }
    const session: Session = { id: newId(), admin: false, clients: new Set(), running: 0, lastSeen: now };
    this.sessions.set(session.id, session);
    return session;
  }

  /** Give `session` a new id (on becoming admin, so an id known before cannot ride along); its open pages close. */
  rotate(session: Session): string {
    const old = session.id;
    this.sessions.delete(old);
    session.id = newId();
    this.sessions.set(session.id, session);
    for (const client of session.clients) client.end();
    session.clients.clear();
    return old;
  }

  all(): IterableIterator<Session> {
    return this.sessions.values();
  }

  private expired(session: Session, now: number): boolean {
    return session.clients.size === 0 && session.running === 0 && now - session.lastSeen > this.options.idleMs;
  }

  private end(session: Session): void {
    this.sessions.delete(session.id);
    for (const client of session.clients) client.end();
    session.clients.clear();
    this.options.onEnd(session);
  }
}

function newId(): string {
  return randomBytes(16).toString("hex");
}
