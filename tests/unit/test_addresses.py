"""The outbound IP-range policy's decisions (net/addresses.py)."""

from __future__ import annotations

import socket

import pytest

from homeserver.config import ConfigError, FederationConfig
from homeserver.net.addresses import DEFAULT_DENIED_RANGES, AddressDenied, AddressPolicy

DENIED = [
    "127.0.0.1", "127.255.255.254", "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.0.1",
    "169.254.169.254", "100.64.0.1", "100.127.255.255", "0.0.0.0", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "::1", "::", "fe80::1", "fe80::1%eth0",
    "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.1.2.3", "::ffff:169.254.169.254",  # IPv4-mapped
    "2002:7f00:1::1", "2002:a00:1::",  # 6to4 of 127.0.0.1 and 10.0.0.1
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 of 127.0.0.1 and 169.254.169.254
    "[::1]", "not an address", "",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.32.0.1", "2606:4700::1111",
           "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", DENIED)
def test_default_policy_denies(address: str) -> None:
    assert not AddressPolicy().allows(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_default_policy_allows_public_addresses(address: str) -> None:
    assert AddressPolicy().allows(address)


def test_allowlist_and_denylist() -> None:
    policy = AddressPolicy(allow=["127.0.0.0/8", "::1/128", "10.0.0.0/8"], deny=["10.9.0.0/16", "8.8.8.8"])
    assert policy.allows("127.0.0.1") and policy.allows("::1") and policy.allows("::ffff:127.0.0.1")
    assert policy.allows("10.1.2.3")
    assert not policy.allows("10.9.1.1")  # the denylist wins over the allowlist
    assert not policy.allows("8.8.8.8")
    assert not policy.allows("192.168.0.1")  # still denied by default
    assert AddressPolicy(allow=["127.0.0.1"]).allows("127.0.0.1")  # a single address is a /32


def test_check_host_judges_ip_literals_only() -> None:
    policy = AddressPolicy()
    with pytest.raises(AddressDenied):
        policy.check_host("[::1]")
    with pytest.raises(AddressDenied):
        policy.check_host("127.0.0.1")
    policy.check_host("localhost")  # a name: judged at connect time, after DNS
    policy.check_host("8.8.8.8")


def test_socket_factory_refuses_before_creating_a_socket() -> None:
    policy = AddressPolicy()
    with pytest.raises(AddressDenied) as err:
        policy.socket_factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)))
    assert isinstance(err.value, OSError) and "denied IP range" in str(err.value)
    with pytest.raises(AddressDenied):
        policy.socket_factory((socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1", 80, 0, 2)))
    sock = policy.socket_factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 443)))
    sock.close()


def test_every_default_range_parses() -> None:
    assert len(AddressPolicy().default_denied) == len(DEFAULT_DENIED_RANGES)


def test_config_rejects_bad_ranges() -> None:
    with pytest.raises(ConfigError, match=r"federation\.ip_range_allowlist\[1\]"):
        FederationConfig(ip_range_allowlist=["127.0.0.0/8", "nope"])
    with pytest.raises(ConfigError, match=r"federation\.key_fetch_max_connections"):
        FederationConfig(key_fetch_max_connections=0)
    assert FederationConfig().ip_range_allowlist == []  # the default denies
