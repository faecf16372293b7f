"""The ``endpoint`` check of the server registry (``docs/protocol/servers.md``, "Endpoint rules").

VPS relay servers register an endpoint URL that clients then connect to, so in production a URL
naming a loopback, private or otherwise internal host would let anyone who can register point
every client at a machine inside someone's network (an SSRF-style attack). The original server
matched hosts against string prefixes, which let ``127.0.0.2`` or ``[fd00::1]`` through; here
every address is parsed with :mod:`ipaddress` and judged by its value. Nothing is resolved: a
name is judged by its text only, and this module does no I/O at all.

The rules, in the order they are applied (the first broken one gives the message):

1. At most 2048 characters.
2. No whitespace, control characters or backslashes anywhere, and a scheme: else not a URL.
3. The scheme is ``https`` or ``wss``; development also allows ``http`` and ``ws``. Checked
   before the host, so ``javascript:alert(1)`` gets the scheme message.
4. A valid authority: a host, no user info, a port (if any) of ASCII digits from 1 to 65535.
   A host in brackets must be an IPv6 address without a zone id (the WHATWG URL standard,
   which browsers follow, refuses zone ids, and they only name link-local addresses). A
   non-ASCII host is converted with the ``idna`` codec first. A host whose last label is a
   number is read as IPv4 the way browsers and ``inet_aton`` read it (``2130706433``,
   ``0x7f.1``, ``0177.0.0.1``) and must parse as such; any other host must be a syntactically
   valid name.
5. Outside development, the host is public: an IP address that is globally routable unicast,
   or a fully qualified name (at least one dot) that is neither ``localhost`` nor under one of
   :data:`INTERNAL_NAME_SUFFIXES`. An IPv4-mapped (``::ffff:0:0/96``) or NAT64
   (``64:ff9b::/96``) address is judged by the IPv4 address inside it; a 6to4 or Teredo
   address must be public and so must the IPv4 addresses inside it; the rest of ``::/8``
   (``::``, ``::1``, ``::a.b.c.d``) is reserved.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

ENDPOINT_MAX_LENGTH = 2048

ENDPOINT_TOO_LONG = f"Invalid endpoint: URL too long (max {ENDPOINT_MAX_LENGTH} characters)"
ENDPOINT_NOT_A_URL = "Invalid endpoint: must be a valid URL"
ENDPOINT_BAD_SCHEME = "Invalid endpoint: must use HTTPS or WSS protocol"
ENDPOINT_NOT_PUBLIC = "Invalid endpoint: must not point to private or internal addresses"

_PRODUCTION_SCHEMES = frozenset({"https", "wss"})
_DEVELOPMENT_SCHEMES = frozenset({"http", "https", "ws", "wss"})

INTERNAL_NAME_SUFFIXES = (
    "localhost",  # RFC 6761: always the local machine, and so is every name under it
    "local",  # RFC 6762: multicast DNS
    "home.arpa",  # RFC 8375: home networks
    "internal",  # reserved by ICANN (2024) for private use
    "intranet",
    "lan",
    "localdomain",
    "corp",
    "home",
    "private",
)
"""Names that are (or are everywhere used as) internal: the name itself and every name under
it are refused in production. The last six are not special-use in any RFC but are what routers
and corporate networks hand out, and no public relay is found under them."""

_IPV4_NETWORKS_NOT_PUBLIC = tuple(
    ipaddress.IPv4Network(network)
    for network in (
        "0.0.0.0/8",  # "this network", the unspecified address included
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback, all of it
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the limited broadcast address
    )
)
_IPV6_NETWORKS_NOT_PUBLIC = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        "::/8",  # unspecified, loopback, IPv4-compatible and -translated addresses
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, Teredo included
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing (SRv6) identifiers
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

_PORT_RE = re.compile(r"[0-9]+")
_IPV6_LITERAL_RE = re.compile(r"[0-9A-Fa-f:.]+")
_IPV4_NUMBER_RE = re.compile(r"0[xX][0-9A-Fa-f]*|[0-9]+")
_LABEL_RE = re.compile(r"[a-z0-9_-]{1,63}")
_HOSTNAME_MAX_LENGTH = 253

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_endpoint(endpoint: str, *, allow_private: bool) -> str | None:
    """None when ``endpoint`` is acceptable, else the error message for a 400 reply.

    ``allow_private`` is the development environment: any host, and ``http``/``ws`` as well as
    ``https``/``wss``; the URL must still be valid. Never raises.
    """
    if len(endpoint) > ENDPOINT_MAX_LENGTH:
        return ENDPOINT_TOO_LONG
    # urlsplit silently strips some whitespace and control characters and other parsers treat
    # a backslash as a slash: refuse them rather than guess which reading a client makes.
    if "\\" in endpoint or any(char == " " or not char.isprintable() for char in endpoint):
        return ENDPOINT_NOT_A_URL
    try:
        parts = urlsplit(endpoint)
    except ValueError:  # unbalanced brackets, or a netloc that NFKC turns into a different URL
        return ENDPOINT_NOT_A_URL
    if not parts.scheme:
        return ENDPOINT_NOT_A_URL
    allowed = _DEVELOPMENT_SCHEMES if allow_private else _PRODUCTION_SCHEMES
    if parts.scheme.lower() not in allowed:
        return ENDPOINT_BAD_SCHEME
    host = _parse_authority(parts.netloc)
    if host is None:
        return ENDPOINT_NOT_A_URL
    if allow_private:
        return None
    public = _is_public_name(host) if isinstance(host, str) else _is_public_address(host)
    return None if public else ENDPOINT_NOT_PUBLIC


def _parse_authority(netloc: str) -> _Address | str | None:
    """The host of ``netloc`` (an address, or a lowercase ASCII name), None when invalid.

    Read by hand rather than through ``SplitResult.hostname``/``.port``, which accept text
    after a closing bracket and IPv6 zone ids, and raise for bad ports.
    """
    if "@" in netloc:
        return None
    if netloc.startswith("["):
        literal, bracket, port = netloc[1:].partition("]")
        if not bracket or "[" in port or "]" in port:
            return None
        if port and not port.startswith(":"):
            return None
        host: _Address | str | None = _parse_ipv6_literal(literal)
    else:
        name, colon, digits = netloc.partition(":")
        if ":" in digits or "[" in netloc or "]" in netloc:
            return None
        port = colon + digits
        host = _parse_host(name)
    # ``port`` is empty, or ":" and what follows it (an empty port is refused too).
    if port and not _is_port(port[1:]):
        return None
    return host


def _is_port(text: str) -> bool:
    return _PORT_RE.fullmatch(text) is not None and 1 <= int(text) <= 65535


def _parse_ipv6_literal(literal: str) -> ipaddress.IPv6Address | None:
    # The pattern also keeps out "%" (zone ids, which ipaddress accepts) and non-ASCII digits.
    if _IPV6_LITERAL_RE.fullmatch(literal) is None:
        return None
    try:
        return ipaddress.IPv6Address(literal)
    except ValueError:
        return None


def _parse_host(host: str) -> ipaddress.IPv4Address | str | None:
    """An IPv4 address when ``host`` ends in a number, else the name in lowercase ASCII."""
    if not host.isascii():
        # Before the number check: nameprep turns full-width digits and "。" into ASCII.
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        return None
    if _IPV4_NUMBER_RE.fullmatch(host.rpartition(".")[2]) is not None:
        return _parse_legacy_ipv4(host)
    if len(host) > _HOSTNAME_MAX_LENGTH:
        return None
    if not all(_LABEL_RE.fullmatch(label) for label in host.split(".")):
        return None
    return host


def _parse_legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as IPv4 by the WHATWG URL standard's IPv4 parser, None when it is not.

    One to four dot-separated numbers, each decimal, octal (leading ``0``) or hex (``0x``);
    the last fills all the bytes the others leave.
    """
    parts = host.split(".")
    if len(parts) > 4:
        return None
    numbers: list[int] = []
    for part in parts:
        number = _parse_ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _parse_ipv4_number(part: str) -> int | None:
    if part[:2] in ("0x", "0X"):
        digits, base, allowed = part[2:], 16, "0123456789abcdefABCDEF"
        if not digits:
            return 0
    elif len(part) > 1 and part.startswith("0"):
        digits, base, allowed = part[1:], 8, "01234567"
    else:
        digits, base, allowed = part, 10, "0123456789"
    if not digits or not all(char in allowed for char in digits):
        return None
    return int(digits, base)


def _is_public_name(name: str) -> bool:
    # A public relay needs a fully qualified name; a single label is resolved through the
    # local search domains, if at all.
    if "." not in name:
        return False
    return not any(
        name == suffix or name.endswith("." + suffix) for suffix in INTERNAL_NAME_SUFFIXES
    )


def _is_public_address(address: _Address) -> bool:
    if isinstance(address, ipaddress.IPv4Address):
        return _is_public_ipv4(address)
    # IPv4-mapped and well-known NAT64 addresses name an IPv4 host (the latter through a
    # translator), which is judged alone: both prefixes lie in ::/8, refused below.
    if address.ipv4_mapped is not None:
        return _is_public_ipv4(address.ipv4_mapped)
    if address in _NAT64:
        return _is_public_ipv4(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    # 6to4 and Teredo addresses must be public as well as the IPv4 addresses inside them.
    embedded: list[ipaddress.IPv4Address] = []
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    if address.teredo is not None:
        embedded.extend(address.teredo)
    if not all(_is_public_ipv4(ipv4) for ipv4 in embedded):
        return False
    # ipaddress's is_global changed between patch releases (3.11.7 calls ::1.2.3.4 and
    # 2002::/16 global, whatever they embed): the table pins what the spec refuses.
    return (
        address.is_global
        and not address.is_multicast
        and not any(address in network for network in _IPV6_NETWORKS_NOT_PUBLIC)
    )


def _is_public_ipv4(address: ipaddress.IPv4Address) -> bool:
    return (
        address.is_global
        and not address.is_multicast
        and not any(address in network for network in _IPV4_NETWORKS_NOT_PUBLIC)
    )
