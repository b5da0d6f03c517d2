"""Prometheus metrics of one server, in its own registry (several servers may share a
process in tests). Components receive the ``Metrics`` object by constructor injection.

Label series per remote server are bounded: a server name becomes a label value only once
it is a peer (it authenticated a request to us, or we sent it a transaction, so it shares a
room with us), and at most ``max_labelled_peers`` names ever do; every other name is
counted under ``OTHER_PEER``. Anyone can name a server in a request, so a label per name
seen would let a stranger grow the registry (and the /metrics page) without end.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# The label value of every server that is not (or not yet) a labelled peer: not a valid
# server name, so it never collides with one.
OTHER_PEER = "(other)"
DEFAULT_MAX_LABELLED_PEERS = 1000

M = TypeVar("M", Counter, Gauge, Histogram)


class PeerLabels:
    """The server names that may appear as label values, at most ``max_peers`` of them,
    first come first kept (never evicted: a label series, once created, stays)."""

    def __init__(self, max_peers: int = DEFAULT_MAX_LABELLED_PEERS) -> None:
        self.max_peers = max_peers
        self._names: set[str] = set()

    def admit(self, server_name: str) -> None:
        """``server_name`` is a peer: label it, while there is room."""
        if len(self._names) < self.max_peers:
            self._names.add(server_name)

    def label(self, server_name: str) -> str:
        return server_name if server_name in self._names else OTHER_PEER

    def __len__(self) -> int:
        return len(self._names)


class PeerLabelled(Generic[M]):
    """A metric whose first label is a server name, given through ``PeerLabels``.
    ``admits``: recording under a name makes it a peer (for call sites that only ever see
    peers: authenticated origins, destinations of our transactions)."""

    def __init__(self, metric: M, peers: PeerLabels, *, admits: bool) -> None:
        self.metric: M = metric
        self._peers = peers
        self._admits = admits

    def labels(self, server_name: str, *rest: str) -> M:
        if self._admits:
            self._peers.admit(server_name)
        child: M = self.metric.labels(self._peers.label(server_name), *rest)
        return child

    def clear(self) -> None:
        self.metric.clear()


class Metrics:
    def __init__(self, max_labelled_peers: int = DEFAULT_MAX_LABELLED_PEERS) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.peers = PeerLabels(max_labelled_peers)

        def peer(metric: M) -> PeerLabelled[M]:  # labelled only with peers' names
            return PeerLabelled(metric, self.peers, admits=True)

        def any_server(metric: M) -> PeerLabelled[M]:  # any name: labelled if a peer
            return PeerLabelled(metric, self.peers, admits=False)

        # ---- inbound federation
        self.inbound_transactions = peer(Counter(
            "hs_inbound_transactions", "Transactions received, per origin", ["origin"], registry=r
        ))
        self.inbound_pdus = peer(Counter(
            "hs_inbound_pdus", "PDUs received, per origin", ["origin"], registry=r
        ))
        self.inbound_pdus_dropped = peer(Counter(
            "hs_inbound_pdus_dropped", "PDUs dropped at the door, per reason", ["origin", "reason"], registry=r
        ))
        self.inbound_duplicate_pdus = peer(Counter(
            "hs_inbound_duplicate_pdus", "PDUs received that we already held, per origin", ["origin"], registry=r
        ))
        self.send_latency = Histogram(
            "hs_send_reply_seconds", "Time to answer /send", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.events_processed = Counter(
            "hs_events_processed", "Inbound events processed, per outcome", ["outcome"], registry=r
        )
        self.inbox_depth = Gauge("hs_inbox_depth", "Inbox entries waiting", registry=r)
        # ---- inbound federation: door and worker (federation/transport.py, worker.py, inbound.py)
        self.inbound_repeated_transactions = peer(Counter(
            "hs_inbound_repeated_transactions", "Transactions received again (same origin and txnId)",
            ["origin"], registry=r,
        ))
        self.inbound_edus_dropped = peer(Counter(
            "hs_inbound_edus_dropped", "EDUs dropped at the door, per reason", ["origin", "reason"],
            registry=r,
        ))
        # (federation/auth.py) requests refused before their signature was verified, and the
        # bytes of bodies being read and checked before it is
        self.inbound_requests_refused = Counter(
            "hs_inbound_requests_refused", "Federation requests refused before authentication, per reason"
            " (too_large, busy, unauthorized)", ["reason"], registry=r,
        )
        self.inbound_unverified_body_bytes = Gauge(
            "hs_inbound_unverified_body_bytes", "Bytes reserved for request bodies whose signature is"
            " not yet verified", registry=r,
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
        self.key_notary_servers = Counter(
            "hs_key_notary_servers", "Servers named in queries to our notary endpoints (/key/v2/query),"
            " by answer: own, cached, fetched, stale (cached, not valid as long as asked), none",
            ["result"], registry=r,
        )
        # ---- outbound federation
        self.outbound_pdus = peer(Counter(
            "hs_outbound_pdus", "PDUs sent, per destination", ["destination"], registry=r
        ))
        self.outbound_transactions = peer(Counter(
            "hs_outbound_transactions", "Transactions sent, per destination and result",
            ["destination", "result"], registry=r,
        ))
        self.refused_relays = Counter(
            "hs_outbound_refused_relays", "Events refused by the sender because another server created them",
            registry=r,
        )
        self.handshake_announcements = Counter(
            "hs_outbound_handshake_announcements", "Remote joins, leaves and knocks accepted through our"
            " send_join/send_leave/send_knock and queued for the room's other servers, per membership",
            ["membership"], registry=r,
        )
        for membership in ("join", "leave", "knock"):
            self.handshake_announcements.labels(membership)
        # (federation/sender.py, net/client.py)
        self.outbound_edus = peer(Counter(
            "hs_outbound_edus", "EDUs sent, per destination", ["destination"], registry=r
        ))
        self.refused_edus = Counter(
            "hs_outbound_refused_edus", "EDUs refused by the sender (not about our own users)", registry=r
        )
        # ---- send-to-device (client_api/to_device.py, federation/pipeline/edus.py)
        self.to_device_dropped = Counter(
            "hs_to_device_dropped", "To-device messages dropped, per reason (queue_full: the oldest of a"
            " device past its queue bound)", ["reason"], registry=r,
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
        self.outbound_destination_request_seconds = any_server(Histogram(
            "hs_outbound_destination_request_seconds", "Outbound federation request latency, per destination",
            ["destination"], registry=r, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        ))
        self.outbound_destination_request_failures = any_server(Counter(
            "hs_outbound_destination_request_failures", "Outbound federation requests failed, per destination",
            ["destination"], registry=r,
        ))
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
        # ---- media repository (homeserver/media/): kind is local or remote; the remote
        # fetch outcome is one of MEDIA_FETCH_OUTCOMES (no server names: bounded labels).
        self.media_uploads = Counter(
            "hs_media_uploads", "Media stored (local uploads, remote media cached)", ["kind"], registry=r
        )
        self.media_bytes_stored = Counter(
            "hs_media_stored_bytes", "Bytes of media stored (before deduplication)", ["kind"], registry=r
        )
        self.media_remote_fetches = Counter(
            "hs_media_remote_fetches", "Remote media fetches, per outcome", ["outcome"], registry=r
        )
        self.federation_media_served = Counter(
            "hs_federation_media_served", "Our media served to other servers (kind: download or thumbnail)",
            ["kind"], registry=r,
        )


# The outcomes of a remote media fetch (the label values of hs_media_remote_fetches_total).
MEDIA_FETCH_OUTCOMES = ("cached", "fetched", "not_found", "too_large", "timeout", "error", "refused")
