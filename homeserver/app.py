"""The app factory: builds the aiohttp applications and wires the services, in one place.

``Services`` owns every long-lived resource (database, HTTP client, keyring) and opens and
closes them symmetrically; the listeners' applications get what they use by constructor
injection, nothing reaches into a global registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, AsyncExitStack, contextmanager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware

from homeserver.client_api import create_client_api_app
from homeserver.config import Config
from homeserver.crypto.keyring import KeyRing
from homeserver.crypto.keys import ServerSigningKey, load_key_file
from homeserver.e2e.service import E2eKeys
from homeserver.errors import forbidden
from homeserver.events.versions import get_room_version
from homeserver.federation.auth import ORIGIN, BodyLimits, make_auth_middleware
from homeserver.federation.directory_api import FederationDirectoryAPI
from homeserver.federation.e2e_api import FederationKeysAPI
from homeserver.federation.hierarchy_api import FederationHierarchyAPI
from homeserver.federation.keys_api import key_routes, well_known_server_route
from homeserver.federation.media_api import FederationMediaAPI
from homeserver.federation.pipeline import InboundProcessor
from homeserver.federation.query_api import FederationQueryAPI
from homeserver.federation.rooms_api import FederationRoomsAPI, user_store_profiles
from homeserver.federation.sender import OutboundSender
from homeserver.federation.transport import FederationTransport
from homeserver.federation.worker import InboundWorker
from homeserver.gcpolicy import collections_paused
from homeserver.http import Handler, error_middleware
from homeserver.media.remote import FederationMediaFetcher
from homeserver.media.repository import MediaRepository
from homeserver.metrics import Metrics
from homeserver.net.client import FederationClient
from homeserver.notifier import Notifier
from homeserver.ops import health_route
from homeserver.presence.service import PresenceService
from homeserver.push.service import PushServices
from homeserver.rooms.acl import AclChecker
from homeserver.rooms.builder import EventBuilder
from homeserver.rooms.checks.receipt import PduChecker
from homeserver.rooms.directory import RoomDirectory
from homeserver.rooms.fetcher import RemoteFetcher
from homeserver.rooms.hierarchy import SpaceHierarchy
from homeserver.rooms.persist import EventPersister
from homeserver.rooms.remote import RemoteMembership
from homeserver.rooms.service import RoomService
from homeserver.rooms.store import RoomMembershipStore
from homeserver.rooms.timestamps import TimestampLookup
from homeserver.storage.database import Database, open_database
from homeserver.storage.directory import DirectoryStore
from homeserver.storage.events import EventStore
from homeserver.storage.inbox import InboxStore
from homeserver.storage.keys import KeyStore
from homeserver.storage.migrations import migrate
from homeserver.storage.openid import OpenIdStore
from homeserver.storage.presence import PresenceStore
from homeserver.storage.timestamps import TimestampStore
from homeserver.storage.to_device import ToDeviceStore
from homeserver.storage.users import UserStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Every long-lived component of one server, built and wired here and nowhere else.

    ``open`` builds them in dependency order and registers each one's shutdown on an
    ``AsyncExitStack`` as soon as it exists, so a failure half-way closes exactly what was
    opened, and ``close`` shuts everything down in the reverse order of opening.
    """

    config: Config
    signing_key: ServerSigningKey
    db: Database
    federation_client: FederationClient
    keyring: KeyRing
    metrics: Metrics
    event_store: EventStore
    persister: EventPersister
    sender: OutboundSender
    inbox: InboxStore
    inbound_worker: InboundWorker
    rooms: RoomService
    directory: RoomDirectory
    acl: AclChecker
    processor: InboundProcessor
    notifier: Notifier  # the one notifier: what happened, for /sync long-polls
    to_device: ToDeviceStore  # devices' to-device inboxes (client API and inbound EDUs)
    clock: Clock = SYSTEM_CLOCK  # the one clock every component reads time from
    media: MediaRepository | None = None  # the media repository (homeserver/media/)
    push: PushServices | None = None  # push rules, notifications, pushers (push/service.py)
    presence: PresenceService | None = None  # online status (client API, inbound EDUs)
    _exit: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)

    @classmethod
    async def open(
        cls, config: Config, signing_key: ServerSigningKey | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> Services:
        key = signing_key or load_key_file(config.signing_key_path)
        async with AsyncExitStack() as stack:
            services = await cls._build(stack, config, key, clock)
            services._exit = stack.pop_all()  # opened: closing is now close()'s job
        return services

    @classmethod
    async def _build(cls, stack: AsyncExitStack, config: Config, key: ServerSigningKey, clock: Clock) -> Services:
        db = await open_database(
            config.database.engine,
            path=config.database.path,
            dsn=config.database.dsn,
            sqlite_sync=config.database.sqlite_sync,
            min_size=config.database.pool_min_size,
            max_size=config.database.pool_max_size,
            timeout=config.database.connect_timeout,
        )
        stack.push_async_callback(db.close)
        await migrate(db)
        metrics = Metrics(config.federation_limits.max_labelled_peers)
        notifier = Notifier(clock)
        client = FederationClient(config.server_name, key, config.federation, metrics, clock=clock)
        stack.push_async_callback(client.close)
        await client.start()
        keyring = KeyRing(
            config.server_name,
            key,
            KeyStore(db),
            client.keys,  # key fetches have a pool of their own
            config.federation.key_servers,
            config.federation.key_fetch_timeout,
            clock=clock,
            max_concurrent_fetches=config.federation_limits.max_concurrent_key_fetches,
            failure_cache_size=config.federation_limits.key_fetch_memory,
            warnings_per_minute=config.federation_limits.key_fetch_warnings_per_minute,
        )
        event_store = EventStore(db)
        persister = EventPersister(event_store, clock=clock, notifier=notifier)
        if config.outbound.catch_up_threshold is not None:
            log.warning(
                "outbound.catch_up_threshold is deprecated: it overrides outbound.catch_up_max_pdus "
                "(queued PDUs replayed to a recovering destination); remove it to replay up to "
                "catch_up_max_pdus", extra={"catch_up_threshold": config.outbound.catch_up_threshold},
            )
        sender = OutboundSender(config.server_name, db, client, config.outbound, metrics, clock=clock)
        stack.push_async_callback(sender.stop)
        await sender.start()
        inbox = InboxStore(db)
        memberships = RoomMembershipStore(db)
        acl = AclChecker(event_store, persister)
        checker = PduChecker(
            keyring, metrics, processes=config.inbound.check_processes, cache_size=config.inbound.cache_size
        )
        fetcher = RemoteFetcher(
            client, checker, event_store, persister, metrics,
            backoff_seconds=config.inbound.fetch_backoff_seconds, clock=clock,
        )
        to_device = ToDeviceStore(db)
        processor = InboundProcessor(
            config.inbound, event_store, persister, fetcher, metrics, memberships, acl,
            clock=clock, notifier=notifier, to_device=to_device,
        )
        # The device-list EDUs go to the end-to-end keys (e2e/service.py).
        e2e = E2eKeys(config.server_name, db, notifier, sender, client.request, metrics=metrics)
        processor.handle_edus("m.device_list_update", e2e.on_device_list_update)
        processor.handle_edus("m.signing_key_update", e2e.on_signing_key_update)
        # Presence: m.presence EDUs go to the one presence service (presence/service.py).
        presence = PresenceService(config.server_name, config.presence, PresenceStore(db), sender, notifier,
                                   metrics, clock)
        stack.push_async_callback(presence.stop)
        await presence.start()
        processor.handle_edus("m.presence", presence.on_edu)
        worker = InboundWorker(inbox, processor, config.inbound, metrics)
        stack.push_async_callback(worker.stop)
        await worker.start()  # drains what a previous run left in the inbox
        builder = EventBuilder(config.server_name, key, event_store, persister, sender, clock=clock)
        remote = RemoteMembership(config.server_name, client, keyring, fetcher, builder, memberships)
        rooms = RoomService(config.server_name, builder, remote, memberships, notifier)
        directory = RoomDirectory(config.server_name, DirectoryStore(db), rooms, client)
        rooms.alias_resolver = directory.resolve  # joins by alias
        rooms.invite_limits = config.invites  # caps on other servers' invites
        rooms.default_room_version = get_room_version(config.rooms.default_room_version)
        media = MediaRepository.open(config, db, metrics, clock=clock)
        FederationMediaFetcher.attach(media, client)  # remote media, over federation (media/remote.py)
        # Push rules, notifications and pushers (push/service.py): told of every committed event.
        push = PushServices.build(
            config.server_name, db, event_store, persister, notifier, post=client.post_url_json, clock=clock
        )
        notifier.event_listeners.append(push.notifications.on_event)
        stack.push_async_callback(push.stop)
        await push.start()
        return cls(
            config, key, db, client, keyring, metrics, event_store, persister, sender, inbox, worker, rooms,
            directory, acl, processor, notifier, to_device, clock, media,
            push=push, presence=presence,
        )

    async def close(self) -> None:
        """Shut down in the reverse order of opening: the inbound worker, the sender, the
        HTTP client, then the database."""
        await self._exit.aclose()


def create_federation_app(services: Services) -> web.Application:
    app = web.Application(
        middlewares=[
            error_middleware,
            make_auth_middleware(
                services.config.server_name, services.keyring, services.sender.notify_destination_up,
                limits=BodyLimits.from_config(
                    services.config.federation_limits, services.config.inbound.max_transaction_bytes
                ),
                metrics=services.metrics,
                once_key_found=answer_first(services.inbound_worker),
            ),
            acl_middleware(services.acl),
        ],
        client_max_size=8 * 1024 * 1024,
    )
    app.add_routes(key_routes(
        services.config, services.signing_key, services.clock, keyring=services.keyring, metrics=services.metrics
    ))
    app.add_routes([health_route(services.db), well_known_server_route(services.config)])
    transport = FederationTransport(
        services.config.server_name,
        services.config.inbound,
        services.event_store,
        services.inbox,
        services.inbound_worker,
        services.metrics,
        services.rooms.memberships,
        services.acl,
        clock=services.clock,
    )
    app.add_routes(transport.routes())
    rooms_api = FederationRoomsAPI(
        services.config.server_name, services.signing_key, services.rooms, services.rooms.remote.checker,
        profiles=user_store_profiles(UserStore(services.db)),
    )
    app.add_routes(rooms_api.routes())
    app.add_routes(FederationDirectoryAPI(services.directory).routes())
    app.add_routes(FederationHierarchyAPI(
        SpaceHierarchy(services.config.server_name, services.rooms),
        TimestampLookup(services.event_store, TimestampStore(services.db)), services.event_store,
    ).routes())
    app.add_routes(FederationKeysAPI(
        E2eKeys(services.config.server_name, services.db, services.notifier, services.sender,
                services.federation_client.request),
        UserStore(services.db),
    ).routes())
    if services.media is not None:
        app.add_routes(FederationMediaAPI(services.media, services.metrics).routes())
    # After the known query types (profile: rooms_api, directory: directory_api).
    app.add_routes(FederationQueryAPI(
        rooms_api, services.event_store, OpenIdStore(services.db), clock=services.clock
    ).routes())
    return app


# The endpoints the spec protects with the room's server ACL (``/send`` is checked per PDU
# and EDU in the transport and the worker); each has the room ID in its path.
_ACL_PROTECTED = frozenset({
    "make_join", "make_leave", "send_join", "send_leave", "invite", "make_knock", "send_knock",
    "state", "state_ids", "backfill", "event_auth", "get_missing_events",
})


def acl_middleware(acl: AclChecker) -> Middleware:
    """403 M_FORBIDDEN to an authenticated server that the room's server ACL denies, on the
    endpoints the spec protects (``rooms/acl.py``)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        parts = request.path.split("/", 5)  # "", "_matrix", "federation", "v1", name, rest
        room_id = request.match_info.get("roomId")
        if (
            room_id is not None and len(parts) > 4 and parts[4] in _ACL_PROTECTED
            and ORIGIN in request and not await acl.allows(request[ORIGIN], room_id)
        ):
            raise forbidden("The room's server ACL denies your server")
        return await handler(request)

    return middleware


def answer_first(worker: InboundWorker) -> Callable[[web.Request], AbstractContextManager[None]]:
    """While a /send is being answered (its signature checked, its body staged), the
    inbound worker holds back and the garbage collector waits, so the remote server gets
    its 200 as soon as possible. Entered by the auth middleware once the origin's key is
    found, not before: a request naming a server that never answers would otherwise hold
    the worker back and the collector off for the whole key fetch."""

    @contextmanager
    def answering(request: web.Request) -> Iterator[None]:
        if request.method == "PUT" and request.path.startswith("/_matrix/federation/v1/send/"):
            with worker.answering(), collections_paused():
                yield
        else:
            yield

    return answering


def create_client_app(services: Services) -> web.Application:
    app = create_client_api_app(
        services.config,
        users=UserStore(services.db, password_log_n=services.config.client.password_scrypt_log_n),
        events=services.event_store,
        persister=services.persister,
        rooms=services.rooms,
        sender=services.sender,
        federation=services.federation_client,
        directory=services.directory,
        metrics=services.metrics,
        clock=services.clock,
        notifier=services.notifier,
        to_device=services.to_device,
        media=services.media,
        push=services.push,
        presence=services.presence,
    )
    # Where a reverse proxy sends the server name's https://<name>/.well-known/ requests.
    app.add_routes([health_route(services.db), well_known_server_route(services.config)])
    return app
