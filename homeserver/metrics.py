"""Prometheus metrics of one server, in its own registry (several servers may share a
process in tests). Components receive the ``Metrics`` object by constructor injection.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector


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
        # ---- inbound federation: door and worker (federation/transport.py, worker.py, inbound.py)
        self.inbound_repeated_transactions = Counter(
            "hs_inbound_repeated_transactions", "Transactions received again (same origin and txnId)",
            ["origin"], registry=r,
        )
        self.inbound_edus_dropped = Counter(
            "hs_inbound_edus_dropped", "EDUs dropped at the door, per reason", ["origin", "reason"],
            registry=r,
        )
        self.inbound_event_seconds = Histogram(
            "hs_inbound_event_seconds", "Worker time per inbound PDU", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0),
        )
        self.inbound_fetched_events = Counter(
            "hs_inbound_fetched_events", "Events stored after fetching them from another server (missing "
            "prev events, auth and state); their origin's own /send may still deliver them later, which "
            "then counts as a duplicate", registry=r,
        )
        self.inbound_helper_checks = Counter(
            "hs_inbound_helper_checks", "Inbound PDUs whose format, signature and hash checks ran in "
            "the check helper processes", registry=r,
        )
        self.inbound_commit_retries = Counter(
            "hs_inbound_commit_retries", "Inbox entries handed back because their deferred commit failed",
            registry=r,
        )
        self.missing_events_fetches = Counter(
            "hs_missing_events_fetches", "Fetches for missing events, per kind and result",
            ["kind", "result"], registry=r,
        )
        self.missing_events_seconds = Histogram(
            "hs_missing_events_seconds", "Time spent filling a gap (get_missing_events, state_ids)",
            registry=r, buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0),
        )
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
        # (federation/sender.py, net/client.py)
        self.outbound_edus = Counter(
            "hs_outbound_edus", "EDUs sent, per destination", ["destination"], registry=r
        )
        self.refused_edus = Counter(
            "hs_outbound_refused_edus", "EDUs refused by the sender (not about our own users)", registry=r
        )
        self.outbound_queue_depth = Gauge(
            "hs_outbound_queue_depth", "Queued outbound PDUs and EDUs (as last seen by the sender)",
            ["kind"], registry=r,
        )
        self.outbound_destinations_backoff = Gauge(
            "hs_outbound_destinations_in_backoff", "Destinations waiting to be retried", registry=r
        )
        self.outbound_destinations_dead = Gauge(
            "hs_outbound_destinations_dead", "Destinations past the dead horizon (not tried)", registry=r
        )
        self.outbound_catch_ups = Counter(
            "hs_outbound_catch_ups", "Queues collapsed to the newest event of each room", ["reason"], registry=r
        )
        self.outbound_request_seconds = Histogram(
            "hs_outbound_request_seconds", "Outbound federation request latency, per method", ["method"],
            registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.outbound_request_failures = Counter(
            "hs_outbound_request_failures", "Outbound federation requests failed, per reason",
            ["reason"], registry=r,
        )
        self.outbound_open_connections = Gauge(
            "hs_outbound_open_connections", "Sockets held by the outbound HTTP client", registry=r
        )

        # ---- per destination, refreshed or observed where the work happens (ops.py, client.py)
        self.outbound_destination_queue_depth = Gauge(
            "hs_outbound_destination_queue_depth", "Queued outbound items per destination and kind"
            " (read from the queue tables when /metrics is scraped)", ["destination", "kind"], registry=r,
        )
        self.outbound_destination_request_seconds = Histogram(
            "hs_outbound_destination_request_seconds", "Outbound federation request latency, per destination",
            ["destination"], registry=r, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.outbound_destination_request_failures = Counter(
            "hs_outbound_destination_request_failures", "Outbound federation requests failed, per destination",
            ["destination"], registry=r,
        )
        self.inbox_oldest_age = Gauge(
            "hs_inbox_oldest_age_seconds", "Age of the oldest inbox entry (0 when empty; read when scraped)",
            registry=r,
        )
        # ---- process (ops.py): open fds and RSS from /proc, event-loop lag from a probe task
        ProcessCollector(registry=r)  # process_open_fds, process_resident_memory_bytes, ...
        self.event_loop_lag = Gauge(
            "hs_event_loop_lag_seconds", "How late the last event-loop probe woke up", registry=r
        )
        self.event_loop_lag_histogram = Histogram(
            "hs_event_loop_lag_probe_seconds", "Event-loop lag per probe", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
        )
