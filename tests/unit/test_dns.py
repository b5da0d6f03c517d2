"""The SRV resolver's own parts: RFC 2782 order of the records, the nameserver setting,
and which nameservers it asks (resolv.conf). The protocol is dnspython's; look-ups against
a nameserver on loopback are in tests/integration/test_srv_discovery.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dns.rrset
import pytest

from homeserver.net.dns import SrvRecord, SrvResolver, parse_nameserver, srv_records


def srv_rrset(*records: str, ttl: int = 60) -> dns.rrset.RRset:
    return dns.rrset.from_text("_matrix-fed._tcp.hs.test.", ttl, "IN", "SRV", *records)


def test_records_in_rfc2782_order() -> None:
    rrset = srv_rrset("20 0 3 c.test.", "10 1 1 a.test.", "10 9 2 b.test.", "5 0 4 first.test.")
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        ordered = srv_records(rrset)
        # every record, lowest priority first
        assert [r.priority for r in ordered] == [5, 10, 10, 20]
        assert ordered[0] == SrvRecord(5, 0, 4, "first.test", 60)
        assert {r.target for r in ordered[1:3]} == {"a.test", "b.test"}
        assert ordered[3].target == "c.test"
        firsts[ordered[1].target] += 1
    # within a priority a weighted random choice: weight 9 against weight 1 comes first
    # 9 times in 10 (dnspython draws uniformly from 0..sum of the weights)
    assert 0.86 < firsts["b.test"] / 2000 < 0.94
    assert srv_records(None) == []


def test_zero_weights_all_kept_and_dot_target_dropped() -> None:
    rrset = srv_rrset(*(f"1 0 {p} t{p}.test." for p in range(5)))
    seen_first = set()
    for _ in range(200):
        ordered = srv_records(rrset)
        assert sorted(r.port for r in ordered) == list(range(5))
        seen_first.add(ordered[0].port)
    assert len(seen_first) > 1  # shuffled, not fixed
    # target "." means "no service here": not a usable record
    assert srv_records(srv_rrset("0 0 0 .")) == []
    assert [r.target for r in srv_records(srv_rrset("0 0 0 .", "1 0 8448 hs.test."))] == ["hs.test"]


def test_parse_nameserver() -> None:
    assert parse_nameserver("10.0.0.1") == ("10.0.0.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:5300") == ("::1", 5300)
    assert parse_nameserver("fe80::1") == ("fe80::1", 53)
    for bad in ("", "host:", "host:0", "host:70000", "[::1"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


async def test_nameservers_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example.org\nnameserver 192.0.2.53 # primary\nnameserver 192.0.2.54\n")
    resolver = await SrvResolver(resolv_conf=str(conf), timeout=0.5, attempts=3)._get_resolver()
    assert resolver.nameservers == ["192.0.2.53", "192.0.2.54"]
    assert (resolver.timeout, resolver.lifetime) == (0.5, 1.5)
    # none there: the local nameserver
    resolver = await SrvResolver(resolv_conf=str(tmp_path / "missing"))._get_resolver()
    assert resolver.nameservers == ["127.0.0.1"]
    # a configured one, by address or by name
    resolver = await SrvResolver(("127.0.0.1", 5353))._get_resolver()
    assert (resolver.nameservers, resolver.port) == (["127.0.0.1"], 5353)
    resolver = await SrvResolver(("localhost", 5300))._get_resolver()
    assert "127.0.0.1" in resolver.nameservers and resolver.port == 5300
