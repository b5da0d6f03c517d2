"""The durable inbox's value types, for the federation modules that handle its entries.

The inbox's statements live in ``homeserver.storage.inbox`` (``InboxStore``); the worker
that drains it is ``homeserver.federation.worker``.
"""

from __future__ import annotations

from homeserver.storage.inbox import Admitted, InboxEntry, InboxStore, PendingPdu

__all__ = ["Admitted", "InboxEntry", "InboxStore", "PendingPdu"]
