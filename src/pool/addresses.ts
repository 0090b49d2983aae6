// Which IP addresses a download may connect to: globally routable unicast only. The ranges are the IANA IPv4
// and IPv6 Special-Purpose Address Registries, plus multicast, the reserved IPv4 class E and every IPv6 address
// outside global unicast 2000::/3; node's BlockList does the matching (it also matches IPv4-mapped IPv6
// addresses against the IPv4 ranges, which is how the socket will reach them).
import { BlockList, isIP } from "node:net";

interface Range {
  /** e.g. "10.0.0.0/8 (private use)", for messages. */
  label: string;
  list: BlockList;
}

function range(prefix: string, bits: number, name: string): Range {
  const list = new BlockList();
  list.addSubnet(prefix, bits, isIP(prefix) === 4 ? "ipv4" : "ipv6");
  return { label: `${prefix}/${bits} (${name})`, list };
}

const IPV4: Array<[string, number, string]> = [
  ["0.0.0.0", 8, "this network"],
  ["10.0.0.0", 8, "private use"],
  ["100.64.0.0", 10, "shared address space"],
  ["127.0.0.0", 8, "loopback"],
  ["169.254.0.0", 16, "link-local"],
  ["172.16.0.0", 12, "private use"],
  ["192.0.0.0", 24, "IETF protocol assignments"],
  ["192.0.2.0", 24, "documentation"],
  ["192.31.196.0", 24, "AS112"],
  ["192.52.193.0", 24, "AMT"],
  ["192.88.99.0", 24, "6to4 relay anycast"],
  ["192.168.0.0", 16, "private use"],
  ["192.175.48.0", 24, "AS112 direct delegation"],
  ["198.18.0.0", 15, "benchmarking"],
  ["198.51.100.0", 24, "documentation"],
  ["203.0.113.0", 24, "documentation"],
  ["224.0.0.0", 4, "multicast"],
  ["240.0.0.0", 4, "reserved, and the limited broadcast address"],
];

// More specific ranges first, so a message names the most telling one.
const IPV6: Array<[string, number, string]> = [
  ["::", 128, "unspecified"],
  ["::1", 128, "loopback"],
  ["::", 96, "IPv4-compatible, deprecated"],
  ["64:ff9b:1::", 48, "local-use IPv4/IPv6 translation"],
  ["100::", 64, "discard-only"],
  ["100:0:0:1::", 64, "dummy prefix"],
  ["2001::", 32, "Teredo"],
  ["2001:2::", 48, "benchmarking"],
  ["2001:10::", 28, "ORCHID, deprecated"],
  ["2001:20::", 28, "ORCHIDv2"],
  ["2001::", 23, "IETF protocol assignments"],
  ["2001:db8::", 32, "documentation"],
  ["2002::", 16, "6to4"],
  ["2620:4f:8000::", 48, "AS112"],
  ["3fff::", 20, "documentation"],
  ["5f00::", 16, "segment routing SIDs"],
  ["fc00::", 7, "unique local"],
  ["fe80::", 10, "link-local"],
  ["fec0::", 10, "site-local, deprecated"],
  ["ff00::", 8, "multicast"],
];

const SPECIAL: Range[] = [
  ...IPV4.map(([prefix, bits, name]) => range(prefix, bits, name)),
  ...IPV6.map(([prefix, bits, name]) => range(prefix, bits, name)),
  // NAT64's well-known prefix reaches the IPv4 address in its last 32 bits, so that address decides.
  ...IPV4.map(([prefix, bits, name]) => range(`64:ff9b::${prefix}`, 96 + bits, `NAT64 of ${name}`)),
];
const LOOPBACK = [range("127.0.0.0", 8, "loopback"), range("::1", 128, "loopback")];
const GLOBAL_UNICAST = range("2000::", 3, "global unicast");
// IPv4-mapped and NAT64 addresses whose IPv4 address passed the ranges above are as good as that address.
const TRANSLATED = [range("::ffff:0:0", 96, "IPv4-mapped"), range("64:ff9b::", 96, "NAT64")];

/** The special-purpose range `address` lies in, e.g. "10.0.0.0/8 (private use)", or undefined for a globally
 *  routable address. Anything that is not an IP address is refused too. */
export function specialRange(address: string): string | undefined {
  const family = isIP(address);
  if (family === 0) return "not an IP address";
  const type = family === 4 ? "ipv4" : "ipv6";
  const special = SPECIAL.find((candidate) => candidate.list.check(address, type));
  if (special) return special.label;
  if (type === "ipv6" && !GLOBAL_UNICAST.list.check(address, type) && !TRANSLATED.some((candidate) => candidate.list.check(address, type))) {
    return "outside 2000::/3 (global unicast), reserved";
  }
  return undefined;
}

/** 127.0.0.0/8 or ::1, also IPv4-mapped. */
export function isLoopback(address: string): boolean {
  const family = isIP(address);
  return family !== 0 && LOOPBACK.some((candidate) => candidate.list.check(address, family === 4 ? "ipv4" : "ipv6"));
}
