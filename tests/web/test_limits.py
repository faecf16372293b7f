"""Front-end admission: connection caps and the client IP (docs/protocol/conventions.md, "Limits",
"Per-IP accounting")."""

from __future__ import annotations

import ipaddress

import pytest

from zajel.web.limits import ConnectionCaps, client_ip, ip_key


def test_total_cap():
    caps = ConnectionCaps(max_total=3, max_per_ip=10)
    assert all(caps.try_acquire(f"10.0.0.{n}") for n in range(3))
    assert caps.try_acquire("10.0.0.99") is False
    assert caps.total == 3
    caps.release("10.0.0.1")
    assert caps.try_acquire("10.0.0.99") is True
    assert caps.total == 3


def test_per_ip_cap():
    caps = ConnectionCaps(max_total=100, max_per_ip=2)
    assert caps.try_acquire("192.0.2.1")
    assert caps.try_acquire("192.0.2.1")
    assert caps.try_acquire("192.0.2.1") is False
    assert caps.try_acquire("192.0.2.2") is True
    assert caps.total == 3
    assert caps.ips() == 2


def test_refusals_count_nothing():
    caps = ConnectionCaps(max_total=1, max_per_ip=1)
    assert caps.try_acquire("a")
    for _ in range(10):
        assert caps.try_acquire("a") is False
        assert caps.try_acquire("b") is False
    assert caps.total == 1
    assert caps.ips() == 1


def test_release_frees_the_slot_and_forgets_idle_ips():
    caps = ConnectionCaps(max_total=10, max_per_ip=2)
    for _ in range(2):
        assert caps.try_acquire("a")
    assert caps.try_acquire("b")
    caps.release("a")
    assert caps.try_acquire("a")
    caps.release("a")
    caps.release("a")
    caps.release("b")
    assert caps.total == 0
    assert caps.ips() == 0  # memory follows the open connections


def test_many_ips_come_and_go():
    caps = ConnectionCaps(max_total=10_000, max_per_ip=100)
    ips = [f"10.{n // 256}.{n % 256}.1" for n in range(5_000)]
    for ip in ips:
        assert caps.try_acquire(ip)
    assert caps.ips() == 5_000
    for ip in ips:
        caps.release(ip)
    assert (caps.total, caps.ips()) == (0, 0)


PROXY = [ipaddress.ip_network("10.0.0.0/8")]
CHAIN = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.0/24")]


def test_client_ip_is_the_socket_peer_without_a_trusted_proxy():
    headers = {"CF-Connecting-IP": "203.0.113.9", "X-Forwarded-For": "198.51.100.1"}
    assert client_ip("10.0.0.1", headers.items(), None) == "10.0.0.1"
    assert client_ip("10.0.0.1", headers.items(), None, PROXY) == "10.0.0.1"
    assert client_ip(None, headers.items(), None) == "unknown"
    assert client_ip("", {}.items(), None) == "unknown"


def test_the_header_is_believed_only_from_a_trusted_proxy():
    headers = {"CF-Connecting-IP": "203.0.113.9", "X-Forwarded-For": "198.51.100.1"}
    for header in ("CF-Connecting-IP", "X-Forwarded-For"):
        # Anyone else who sends the header gets counted by its own address.
        assert client_ip("198.51.100.50", headers.items(), header, PROXY) == "198.51.100.50"
        assert client_ip("198.51.100.50", headers.items(), header, ()) == "198.51.100.50"
    assert client_ip("10.1.2.3", headers.items(), "CF-Connecting-IP", PROXY) == "203.0.113.9"
    assert client_ip("10.1.2.3", headers.items(), "X-Forwarded-For", PROXY) == "198.51.100.1"


def test_client_ip_from_cf_connecting_ip():
    headers = {"CF-Connecting-IP": " 203.0.113.9 "}
    assert client_ip("10.0.0.1", headers.items(), "CF-Connecting-IP", PROXY) == "203.0.113.9"
    assert client_ip("10.0.0.1", {}.items(), "CF-Connecting-IP", PROXY) == "10.0.0.1"
    blank = {"CF-Connecting-IP": "  "}
    assert client_ip("10.0.0.1", blank.items(), "CF-Connecting-IP", PROXY) == "10.0.0.1"
    # Only the trusted header counts.
    other = {"X-Forwarded-For": "1.2.3.4"}
    assert client_ip("10.0.0.1", other.items(), "CF-Connecting-IP", PROXY) == "10.0.0.1"


@pytest.mark.parametrize(
    ("value", "ip"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("1.1.1.1, 203.0.113.9", "203.0.113.9"),  # the left part is the client's own claim
        ("spoofed, 1.1.1.1,203.0.113.9 ", "203.0.113.9"),
        ("203.0.113.9, ", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        (" , ,", "10.0.0.1"),
        ("", "10.0.0.1"),
        ("not-an-ip", "10.0.0.1"),  # garbage from a trusted hop: the hop itself is the client
        ("x" * 1000, "10.0.0.1"),
    ],
)
def test_client_ip_from_x_forwarded_for_takes_the_right_most_hop(value, ip):
    headers = {"X-Forwarded-For": value}.items()
    assert client_ip("10.0.0.1", headers, "X-Forwarded-For", PROXY) == ip


def test_a_chain_of_trusted_proxies_is_walked_right_to_left():
    # client 203.0.113.9 -> CDN 192.0.2.5 -> load balancer 10.0.0.2 -> us
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 192.0.2.5"}.items()
    assert client_ip("10.0.0.2", headers, "X-Forwarded-For", CHAIN) == "203.0.113.9"
    # Every hop trusted: the left-most one is as far as anyone can tell.
    headers = {"X-Forwarded-For": "10.9.9.9, 192.0.2.5"}.items()
    assert client_ip("10.0.0.2", headers, "X-Forwarded-For", CHAIN) == "10.9.9.9"


def test_client_ip_header_names_match_case_insensitively():
    # Frameworks title-case names ("Cf-Connecting-Ip"); the setting spells them as specified.
    headers = [("Cf-Connecting-Ip", "203.0.113.7")]
    assert client_ip("10.0.0.1", headers, "CF-Connecting-IP", PROXY) == "203.0.113.7"


def test_client_ip_joins_repeated_x_forwarded_for_headers():
    # A client-sent X-Forwarded-For line comes first; the proxy's own hop is the right-most.
    headers = [("X-Forwarded-For", "6.6.6.6"), ("x-forwarded-for", "203.0.113.9")]
    assert client_ip("10.0.0.1", headers, "X-Forwarded-For", PROXY) == "203.0.113.9"


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::9]", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("unknown", "unknown"),
    ],
)
def test_per_ip_caps_count_ipv6_clients_by_their_64(ip, key):
    assert ip_key(ip) == key
