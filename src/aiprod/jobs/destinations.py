"""Where a webhook may be sent: public unicast addresses only (no SSRF into the operator's network).

Two checks, the same rules:

- at submit, ``check_webhook_url`` parses the URL (http/https only, no control character or
  whitespace anywhere, a host) and refuses ``localhost``/``*.localhost`` and any IP literal,
  in any spelling (``2130706433``, ``0x7f.1``, ``017700000001``, ``[::ffff:127.0.0.1]``), that
  is not a public unicast address. Host names are not resolved at submit (DNS can change);
- at delivery, ``vet`` resolves the name, checks every address it resolves to and returns the
  one to connect to; the dispatcher connects to that address (sending the original Host header
  and TLS server name), so a second DNS answer cannot redirect the request (no DNS rebinding).

The ranges are the standard library's (``ipaddress``: loopback, private incl. RFC 1918 and
fc00::/7, link-local incl. 169.254.169.254 and fe80::/10, shared/CGNAT 100.64.0.0/10,
multicast, unspecified, reserved, anything not global). IPv6 forms that carry an IPv4 address
(mapped ``::ffff:a.b.c.d``, compatible ``::a.b.c.d``, 6to4 and NAT64) are judged by that IPv4
address. ``AIPROD_WEBHOOK_ALLOW_NETWORKS`` (``Settings.webhook_allowed_networks``) lets an
operator allow named networks (never multicast or unspecified addresses).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses the name resolves to (tests pass a stub; never the network)
Resolver = Callable[[str, int], Sequence[str]]

_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known NAT64 prefix (RFC 6052)


class DestinationRefused(ValueError):
    """The URL is malformed or names an address webhooks may not be sent to."""


@dataclass(frozen=True)
class Destination:
    """A parsed webhook URL: scheme, host (IDNA, lower case, no brackets), port, IP if literal."""

    scheme: str
    host: str
    port: int
    ip: Address | None

    @property
    def key(self) -> str:
        """What caps and the circuit breaker count by: one receiving host and port."""
        return f"{self.host}:{self.port}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_destination(url: str) -> Destination:
    """The URL's destination; raises DestinationRefused naming what is wrong."""
    if any(unicodedata.category(c) == "Cc" or c.isspace() for c in url):
        raise DestinationRefused("webhook_url must not contain control characters or whitespace")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused(f"webhook_url is not a valid URL ({exc})") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise DestinationRefused(
            "webhook_url must be an absolute http(s) URL, e.g. https://example.com/hook"
        )
    raw = parts.hostname
    if "[" in parts.netloc:  # a bracketed IPv6 literal
        try:
            ip: Address | None = ipaddress.IPv6Address(raw)
        except ValueError:
            raise DestinationRefused(f"webhook_url host [{raw}] is not an IPv6 address") from None
        host = raw
    else:
        try:
            host = raw.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise DestinationRefused("webhook_url host is not a valid host name") from None
        ip = _ipv4_literal(host)
    if ip is not None:
        host = str(ip)
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    elif port == 0:
        raise DestinationRefused("webhook_url port 0 is not a port one can connect to")
    return Destination(scheme=parts.scheme, host=host, port=port, ip=ip)


def _ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """The address of a host spelt as an IPv4 number in any form the C library accepts
    (dotted, decimal, octal, hex, short forms); None for a name. As in the WHATWG URL rules, a
    host whose last label is a number is an address, so an unparseable one is refused."""
    bare = host[:-1] if host.endswith(".") else host
    if not _NUMERIC_LABEL.fullmatch(bare.rsplit(".", 1)[-1]):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except OSError:
        raise DestinationRefused(f"webhook_url host {host!r} is not a valid IPv4 address") from None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):  # NAT64, IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(ip: Address, allow: Sequence[Network] = ()) -> str | None:
    """Why webhooks may not go to ``ip`` (e.g. "a loopback address"); None if they may."""
    if isinstance(ip, ipaddress.IPv6Address):
        v4 = _embedded_ipv4(ip)
        if v4 is not None:
            why = address_refusal(v4, allow)
            return None if why is None else f"{why} ({v4} in IPv6 form)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "the unspecified address"
    if any(ip.version == net.version and ip in net for net in allow):
        return None
    for predicate, name in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(ip, predicate):
            return name
    if not ip.is_global:  # e.g. shared address space 100.64.0.0/10 (CGNAT)
        return "not a public address"
    return None


def check_webhook_url(url: str, allow: Sequence[Network] = ()) -> Destination:
    """The submit-time check (no DNS lookup); raises DestinationRefused."""
    dest = parse_destination(url)
    name = dest.host.rstrip(".")
    if dest.ip is None and (name == "localhost" or name.endswith(".localhost")):
        if not any(net.version == 4 and ipaddress.IPv4Address("127.0.0.1") in net for net in allow):
            raise DestinationRefused(f"webhook_url host {dest.host} is a loopback name")
    if dest.ip is not None:
        why = address_refusal(dest.ip, allow)
        if why is not None:
            raise DestinationRefused(f"webhook_url host {dest.host} is {why}")
    return dest


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def vet(dest: Destination, resolver: Resolver, allow: Sequence[Network] = ()) -> Address:
    """The delivery-time check: the address to connect to, after checking every address the
    host resolves to (one refused address refuses the destination). Raises DestinationRefused."""
    if dest.ip is not None:
        addresses: list[Address] = [dest.ip]
    else:
        try:
            found = resolver(dest.host, dest.port)
        except OSError as exc:
            raise DestinationRefused(f"webhook host {dest.host} did not resolve ({exc})") from None
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        except ValueError:
            raise DestinationRefused(
                f"webhook host {dest.host}: resolver answer {found!r}"
            ) from None
        if not addresses:
            raise DestinationRefused(f"webhook host {dest.host} resolved to no address")
    for ip in addresses:
        why = address_refusal(ip, allow)
        if why is not None and dest.ip is not None:
            raise DestinationRefused(f"webhook host {dest.host} is {why}")
        if why is not None:
            raise DestinationRefused(f"webhook host {dest.host} resolves to {ip}, {why}")
    return addresses[0]
