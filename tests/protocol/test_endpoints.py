"""The registry's endpoint check (docs/protocol/servers.md, "Endpoint rules")."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zajel.protocol import endpoints
from zajel.protocol.endpoints import ENDPOINT_MAX_LENGTH, check_endpoint

# The original server's texts, which clients may show: spelled out, not imported.
TOO_LONG = "Invalid endpoint: URL too long (max 2048 characters)"
NOT_A_URL = "Invalid endpoint: must be a valid URL"
BAD_SCHEME = "Invalid endpoint: must use HTTPS or WSS protocol"
NOT_PUBLIC = "Invalid endpoint: must not point to private or internal addresses"
MESSAGES = {TOO_LONG, NOT_A_URL, BAD_SCHEME, NOT_PUBLIC}


def fullwidth(text: str) -> str:
    """``text`` with its ASCII letters and digits in their full-width forms (dots kept)."""
    return "".join(chr(ord(char) + 0xFEE0) if char.isalnum() else char for char in text)


def test_messages_are_the_originals():
    assert endpoints.ENDPOINT_TOO_LONG == TOO_LONG
    assert endpoints.ENDPOINT_NOT_A_URL == NOT_A_URL
    assert endpoints.ENDPOINT_BAD_SCHEME == BAD_SCHEME
    assert endpoints.ENDPOINT_NOT_PUBLIC == NOT_PUBLIC
    assert ENDPOINT_MAX_LENGTH == 2048


@pytest.mark.parametrize(
    "endpoint",
    [
        # IPv4: every range the spec names, not only the prefixes the original matched.
        "https://127.0.0.1",
        "https://127.0.0.2",
        "https://127.255.255.254",
        "wss://127.0.0.1:443/ws",
        "https://10.1.2.3",
        "https://172.16.0.1",
        "https://172.31.255.255",
        "https://192.168.1.1",
        "https://169.254.1.1",
        "https://169.254.169.254/latest/meta-data/",  # cloud metadata service
        "https://100.64.0.1",
        "https://0.0.0.0",
        "https://0.1.2.3",
        "https://224.0.0.1",
        "https://239.255.255.250",
        "https://240.0.0.1",
        "https://255.255.255.255",
        "https://198.18.0.1",
        "https://198.19.255.255",
        "https://192.0.0.9",
        "https://192.0.2.1",
        "https://198.51.100.7",
        "https://203.0.113.7",
        # Numeric forms that browsers and inet_aton read as 127.0.0.1.
        "https://2130706433",
        "https://0x7f000001",
        "https://0X7F000001",
        "https://0177.0.0.1",
        "https://0177.0.0.01",
        "https://127.1",
        "https://127.0.1",
        "https://0x7f.1",
        "https://0x7f.0x0.0.1",
        "https://127.0.0.1.",
        "https://017700000001",
        "https://0",
        "https://0x",
        "https://" + fullwidth("127.0.0.1"),  # nameprep makes full-width digits ASCII
        "https://127。0。0。1",  # ideographic full stops
        "https://10.0.0.1:8443/path?q=1",
        # IPv6.
        "https://[::1]",
        "https://[0:0:0:0:0:0:0:1]",
        "https://[::]",
        "https://[fd00::1]",
        "https://[FD12:3456::1]",
        "https://[fc00::1]",
        "https://[fe80::1]",
        "https://[fec0::1]",
        "https://[ff02::1]",
        "https://[ff0e::1]",
        "https://[2001:db8::1]",
        "https://[100::1]",
        "https://[::ffff:127.0.0.1]",
        "https://[::ffff:7f00:2]",
        "https://[::ffff:10.0.0.1]",
        "https://[::ffff:169.254.169.254]",
        "https://[::127.0.0.1]",  # IPv4-compatible
        "https://[::8.8.8.8]",  # IPv4-compatible: reserved whatever it embeds
        "https://[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
        "https://[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
        "https://[64:ff9b:1::808:808]",  # local-use NAT64
        "https://[2002:7f00:1::]",  # 6to4 of 127.0.0.1
        "https://[2002:c0a8:101::1]",  # 6to4 of 192.168.1.1
        "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # Teredo
        "https://[2001:0:a00:1::]",  # Teredo with a private server address
        "wss://[::1]:443/ws",
        # Names.
        "https://localhost",
        "https://localhost:8443",
        "https://LOCALHOST.",
        "https://LocalHost",
        "https://foo.localhost",
        "https://" + fullwidth("localhost"),
        "https://printer.local",
        "https://db.internal",
        "https://metadata.google.internal",
        "https://wiki.intranet",
        "https://nas.lan",
        "https://router.home.arpa",
        "https://box.localdomain",
        "https://mail.corp",
        "https://pi.home",
        "https://vault.private",
        "https://myserver",
        "https://myserver.",
        "https://com",
    ],
)
def test_non_public_hosts_are_refused_in_production(endpoint):
    assert check_endpoint(endpoint, allow_private=False) == NOT_PUBLIC
    assert check_endpoint(endpoint, allow_private=True) is None


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://relay.example.com",
        "https://relay.example.com/",
        "https://relay.example.com.",
        "https://RELAY.Example.COM",
        "wss://relay.example.com:8443/ws",
        "WSS://relay.example.com/ws#frag",
        "https://relay.example.com:443/path?q=1&r=2",
        "https://relay.example.com:0443",
        "https://relay-1.eu_west.example.com",
        "https://8.8.8.8",
        "https://1.1.1.1:443/path?q=1",
        "https://134744072",  # 8.8.8.8 as one number: public, so fine
        "https://[2606:4700:4700::1111]",
        "wss://[2606:4700:4700::1111]:443/ws",
        "https://[::ffff:8.8.8.8]",
        "https://[64:ff9b::808:808]",  # NAT64 of 8.8.8.8
        "https://[2002:808:808::1]",  # 6to4 of 8.8.8.8
        "https://xn--mnchen-3ya.de",
        "https://münchen.de",
        "https://MÜNCHEN.de",
        "https://localhost.example.com",  # only names *under* localhost are refused
        "https://local.example.com",
        "https://relay.example.com?next=http://127.0.0.1",
        "https://relay.example.com#@127.0.0.1",
        "https://relay.example.com/@127.0.0.1",
    ],
)
def test_public_endpoints_are_accepted(endpoint):
    assert check_endpoint(endpoint, allow_private=False) is None
    assert check_endpoint(endpoint, allow_private=True) is None


@pytest.mark.parametrize(
    "endpoint",
    ["http://relay.example.com", "ws://relay.example.com/ws", "HTTP://relay.example.com"],
)
def test_plain_schemes_only_in_development(endpoint):
    assert check_endpoint(endpoint, allow_private=False) == BAD_SCHEME
    assert check_endpoint(endpoint, allow_private=True) is None


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8080",
        "http://localhost:9000",
        "ws://localhost:9000/ws",
        "http://[::1]:8080",
        "http://myserver",
        "http://192.168.1.10:8080",
    ],
)
def test_development_allows_any_host(endpoint):
    assert check_endpoint(endpoint, allow_private=True) is None
    assert check_endpoint(endpoint, allow_private=False) in {BAD_SCHEME, NOT_PUBLIC}


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://relay.example.com",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:text/html,hi",
        "gopher://relay.example.com",
        "httpx://relay.example.com",
        "relay.example.com:443",  # read as scheme "relay.example.com"
    ],
)
def test_other_schemes_are_refused_in_both_modes(endpoint):
    assert check_endpoint(endpoint, allow_private=False) == BAD_SCHEME
    assert check_endpoint(endpoint, allow_private=True) == BAD_SCHEME


@pytest.mark.parametrize(
    "endpoint",
    [
        "",
        "not a url",
        "relay.example.com",
        "//relay.example.com",
        "https://",
        "https:",
        "https:relay.example.com",
        "https:///relay.example.com",
        "https://:443",
        "https://host:99999",
        "https://host:65536",
        "https://host:0",
        "https://host:abc",
        "https://host:",
        "https://host:+443",
        "https://host:-1",
        "https://host:٤٤٣",  # Arabic-Indic digits
        "https://host:443:443",
        "https://user:pw@relay.example.com",
        "https://user@relay.example.com",
        "https://@relay.example.com",
        "https://relay.example.com\\@evil",
        "https://relay.example.com\\path",
        "https://[::1",
        "https://::1]",
        "https://::1",
        "https://[::1]x",
        "https://[::1]:",
        "https://[::1]:port",
        "https://[::1]]",
        "https://[127.0.0.1]",
        "https://[v1.x]",
        "https://[::g]",
        "https://[::ffff:127.000.0.1]",
        "https://[fe80::1%25eth0]",
        "https://[fe80::1%eth0]",
        "https://[]",
        "https://256.1.1.1",
        "https://1.2.3.4.5",
        "https://1.2.3.256",
        "https://4294967296",
        "https://0x100000000",
        "https://1.0x1000000",
        "https://08.0.0.1",  # octal with an 8
        "https://1..1",
        "https://foo.0x",
        "https://foo.123",
        "https://exa mple.com",
        " https://relay.example.com",
        "https://relay.example.com ",
        "https://relay.example.com/a b",
        "https://relay.example.com\n",
        "https://relay.\texample.com",
        "https://relay.example.com\x00",
        "\x01https://relay.example.com",
        "https://relay.example.com\u200b",  # zero-width space
        "https://relay.example.com\u00a0",  # no-break space
        "https://relay..example.com",
        "https://.example.com",
        "https://relay.example.com..",
        "https://.",
        "https://relay!.example.com",
        "https://relay%2eexample.com",
        "https://%31%32%37.0.0.1",
        "https://relay.example.com;x",
        "https://" + "a" * 64 + ".com",
        "https://" + ".".join(["a" * 63] * 4) + ".com",  # 258 characters
        "https://ex\u0000ample.com",
        "https://a\u2100b.com",  # NFKC makes "a/cb": a different URL
        "https://" + "ü" * 70 + ".com",  # idna label too long
    ],
)
def test_invalid_urls_are_refused_in_both_modes(endpoint):
    assert check_endpoint(endpoint, allow_private=False) == NOT_A_URL
    assert check_endpoint(endpoint, allow_private=True) == NOT_A_URL


def test_longest_hostname_is_accepted():
    name = ".".join(["a" * 63] * 3 + ["a" * 61])
    assert len(name) == 253
    assert check_endpoint(f"https://{name}", allow_private=False) is None
    assert check_endpoint(f"https://{name}.", allow_private=False) is None


def test_length_limit_counts_characters():
    base = "https://relay.example.com/"
    exact = base + "a" * (ENDPOINT_MAX_LENGTH - len(base))
    assert len(exact) == 2048
    assert check_endpoint(exact, allow_private=False) is None
    assert check_endpoint(exact + "a", allow_private=False) == TOO_LONG
    assert check_endpoint(exact + "a", allow_private=True) == TOO_LONG
    # The length is checked first, before the URL is even read.
    assert check_endpoint("x" * 5000, allow_private=False) == TOO_LONG
    assert check_endpoint("https://127.0.0.1/" + "é" * 2100, allow_private=False) == TOO_LONG


@pytest.mark.parametrize("suffix", endpoints.INTERNAL_NAME_SUFFIXES)
def test_every_internal_suffix_is_refused_with_and_under_it(suffix):
    for endpoint in (f"https://{suffix}", f"https://relay.{suffix}", f"https://a.b.{suffix}."):
        assert check_endpoint(endpoint, allow_private=False) == NOT_PUBLIC
        assert check_endpoint(endpoint, allow_private=True) is None
    # A name merely ending in the same letters is not under the suffix.
    assert check_endpoint(f"https://relay.x{suffix}.com", allow_private=False) is None


@settings(deadline=None, max_examples=500)
@given(st.text(), st.booleans())
def test_arbitrary_text_never_raises(text, allow_private):
    assert check_endpoint(text, allow_private=allow_private) in MESSAGES | {None}


url_pieces = st.sampled_from(
    [
        "https://",
        "wss://",
        "http://",
        "[",
        "]",
        ":",
        "::",
        "@",
        ".",
        "0x",
        "0",
        "127",
        "255",
        "%25",
        "ffff",
        "ü",
        "xn--",
        "/",
        "?",
        "#",
        "localhost",
        "\\",
        "。",
        fullwidth("1"),
    ]
)


@settings(deadline=None, max_examples=500)
@given(st.lists(url_pieces | st.text(max_size=3), max_size=12), st.booleans())
def test_url_like_text_never_raises(pieces, allow_private):
    text = "".join(pieces)
    assert check_endpoint(text, allow_private=allow_private) in MESSAGES | {None}


@settings(deadline=None, max_examples=300)
@given(st.integers(0, 2**32 - 1))
def test_every_ipv4_number_form_is_judged_as_the_address(value):
    # Dotted, one-number, hex and octal spellings of one address get the same verdict.
    octets = value.to_bytes(4, "big")
    forms = [
        ".".join(str(octet) for octet in octets),
        str(value),
        hex(value),
        "0" + oct(value)[2:],
        ".".join(f"0x{octet:x}" for octet in octets),
    ]
    verdicts = {check_endpoint(f"https://{form}", allow_private=False) for form in forms}
    assert len(verdicts) == 1
    assert verdicts <= {None, NOT_PUBLIC}
