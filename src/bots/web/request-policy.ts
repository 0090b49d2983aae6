// What the web chat settles about a request before routing it: whether it was addressed to one of the chat's own
// host names (a page on a foreign name that resolves to us, i.e. DNS rebinding, is refused), the headers that keep
// the page out of frames and foreign script out of the page, whether a POST comes from the chat's own page, and
// which address it comes from (through a reverse proxy only where one is configured), by which guests are counted.
import { createHmac, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import type { IncomingMessage } from "node:http";
import { BlockList, isIP } from "node:net";
import { dirname } from "node:path";

/** Sent on every response. The page's script and style are files of its own origin; images may be inline previews. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    + "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
};

const LOOPBACK_NAMES = ["localhost", "127.0.0.1", "[::1]"];
const WILDCARDS = ["0.0.0.0", "::", "[::]"];

/** A Host header (or a configured name) as name and port; IPv6 literals keep their brackets. */
function splitHost(value: string): { name: string; port?: number } | undefined {
  const match = /^(\[[0-9a-f:.]+\]|[^:[\]]+)(?::(\d{1,5}))?$/i.exec(value.trim());
  if (!match) return undefined;
  return { name: match[1]!.toLowerCase(), port: match[2] === undefined ? undefined : Number(match[2]) };
}

/**
 * The host names the chat answers to: the one it is bound to, the loopback names when bound to loopback (or to
 * every interface, which includes it), any address literal when bound to every interface (a rebinding page always
 * uses a name, never an address), each at the chat's port, and the configured names (`web.allowed_hosts`:
 * "name" at any port, e.g. behind a reverse proxy, or "name:port").
 */
export class HostNames {
  private readonly configured: Array<{ name: string; port?: number }>;
  private readonly own: Set<string>;
  private readonly wildcard: boolean;

  constructor(bound: string, private readonly port: number, allowed: readonly string[]) {
    const name = isIP(bound) === 6 ? `[${bound.toLowerCase()}]` : bound.toLowerCase();
    this.wildcard = WILDCARDS.includes(name);
    const loopback = this.wildcard || LOOPBACK_NAMES.includes(name) || /^127\./.test(name);
    this.own = new Set([name, ...(loopback ? LOOPBACK_NAMES : [])]);
    this.configured = allowed.map((entry) => {
      const parsed = splitHost(entry);
      if (!parsed) throw new Error(`web.allowed_hosts: ${JSON.stringify(entry)} is not a host name, e.g. chat.example.org or chat.example.org:8443`);
      return parsed;
    });
  }

  allows(header: string | undefined): boolean {
    const given = header === undefined ? undefined : splitHost(header);
    if (!given) return false;
    if (this.configured.some((entry) => entry.name === given.name && (entry.port === undefined || entry.port === given.port))) return true;
    if ((given.port ?? 80) !== this.port) return false;
    return this.own.has(given.name) || (this.wildcard && isIP(given.name.replace(/^\[|\]$/g, "")) !== 0);
  }
}

/** Browsers send Origin on POST; a request from another site (or with no Origin) must not act for the session. */
export function sameOrigin(request: IncomingMessage): boolean {
  const origin = request.headers.origin;
  const host = request.headers.host;
  // https when a TLS-terminating reverse proxy serves the chat.
  return host !== undefined && (origin === `http://${host}` || origin === `https://${host}`);
}

/** An address as one spelling: IPv4 clients of an IPv6 socket (`::ffff:1.2.3.4`) as IPv4, no zone, lower case. */
function normalise(address: string): string {
  const bare = address.trim().replace(/%.*$/, "").toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(bare);
  return mapped ? mapped[1]! : bare;
}

/**
 * The address a request comes from: the socket's peer, or, where that peer is a configured proxy
 * (`web.trusted_proxies`: addresses or CIDR ranges), the last X-Forwarded-For entry that no trusted proxy added.
 * Without a configured proxy the header is ignored: any client could write one.
 */
export class ClientAddresses {
  private readonly trusted: BlockList | undefined;

  constructor(trustedProxies: readonly string[]) {
    if (trustedProxies.length === 0) return;
    this.trusted = new BlockList();
    for (const entry of trustedProxies) {
      const [address = "", prefix] = entry.split("/");
      const family = isIP(address);
      const bits = prefix === undefined ? undefined : Number(prefix);
      if (family === 0 || (bits !== undefined && !(Number.isInteger(bits) && bits >= 0 && bits <= (family === 4 ? 32 : 128)))) {
        throw new Error(`web.trusted_proxies: ${JSON.stringify(entry)} is not an address or a CIDR range, e.g. 127.0.0.1 or 10.0.0.0/8`);
      }
      const type = family === 4 ? "ipv4" : "ipv6";
      if (bits === undefined) this.trusted.addAddress(address, type);
      else this.trusted.addSubnet(address, bits, type);
    }
  }

  of(request: IncomingMessage): string {
    let address = normalise(request.socket.remoteAddress ?? "");
    if (!this.trusted || !this.isTrusted(address)) return address;
    const forwarded = String(request.headers["x-forwarded-for"] ?? "").split(",").map(normalise).filter(Boolean);
    for (const hop of forwarded.reverse()) {
      if (isIP(hop) === 0) break;
      address = hop;
      if (!this.isTrusted(hop)) break;
    }
    return address;
  }

  private isTrusted(address: string): boolean {
    const family = isIP(address);
    return family !== 0 && this.trusted!.check(address, family === 4 ? "ipv4" : "ipv6");
  }
}

/**
 * A guest's stable, opaque key for an address: IPv4 as it is, IPv6 by its /64 (one host usually holds a whole /64
 * and can move through it at will), keyed with a secret so that the key, which other guests may see, does not
 * give the address away.
 */
export function addressKey(address: string, secret: Buffer): string {
  const subject = isIP(address) === 6 ? ipv6Prefix(address) : address;
  return createHmac("sha256", secret).update(subject).digest("hex").slice(0, 16);
}

/** The first four groups of an IPv6 address, written out in full. */
function ipv6Prefix(address: string): string {
  const [head = "", tail] = address.split("::");
  const groups = (part: string) => part.split(":").filter(Boolean).flatMap((group) => group.includes(".") ? ["0", "0"] : [group]);
  const front = groups(head);
  const back = tail === undefined ? [] : groups(tail);
  const full = [...front, ...Array<string>(Math.max(0, 8 - front.length - back.length)).fill("0"), ...back];
  return full.slice(0, 4).map((group) => Number.parseInt(group, 16).toString(16)).join(":");
}

/**
 * The secret for `addressKey`, kept in the data folder so that a guest keeps their key (and today's count) across
 * restarts; made on first use.
 */
export async function guestKeySecret(path: string): Promise<Buffer> {
  await mkdir(dirname(path), { recursive: true });
  try {
    await writeFile(path, randomBytes(32).toString("hex"), { flag: "wx", mode: 0o600 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  const secret = Buffer.from((await readFile(path, "utf8")).trim(), "hex");
  if (secret.length < 16) throw new Error(`${path} does not hold the web chat's key (64 hex digits); delete it and a new one is made`);
  return secret;
}
