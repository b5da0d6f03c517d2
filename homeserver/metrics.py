"""Prometheus metrics of one server, in its own registry (several servers may share a
process in tests). Components receive the ``Metrics`` object by constructor injection.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # ---- inbound federation
        self.inbound_transactions = Counter(
            "hs_inbound_transactions", "Transactions received, per origin", ["origin"], registry=r
        )
        self.inbound_pdus = Counter(
            "hs_inbound_pdus", "PDUs received, per origin", ["origin"], registry=r
        )
        self.inbound_pdus_dropped = Counter(
            "hs_inbound_pdus_dropped", "PDUs dropped at the door, per reason", ["origin", "reason"], registry=r
        )
        self.inbound_duplicate_pdus = Counter(
            "hs_inbound_duplicate_pdus", "PDUs received that we already held, per origin", ["origin"], registry=r
        )
        self.send_latency = Histogram(
            "hs_send_reply_seconds", "Time to answer /send", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.events_processed = Counter(
            "hs_events_processed", "Inbound events processed, per outcome", ["outcome"], registry=r
        )
        self.inbox_depth = Gauge("hs_inbox_depth", "Inbox entries waiting", registry=r)
        # ---- outbound federation
        self.outbound_pdus = Counter(
            "hs_outbound_pdus", "PDUs sent, per destination", ["destination"], registry=r
        )
        self.outbound_transactions = Counter(
            "hs_outbound_transactions", "Transactions sent, per destination and result",
            ["destination", "result"], registry=r,
        )
        self.refused_relays = Counter(
            "hs_outbound_refused_relays", "Events refused by the sender because another server created them",
            registry=r,
        )
