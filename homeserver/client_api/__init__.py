"""The client-server API subset: what Matrix clients (matrix-nio, Element) use to register,
log in, create and join rooms, talk, moderate and /sync.

``create_client_app`` wires one handler class per area (auth.py accounts, rooms.py
membership and state reads, events.py sending and pagination, sync.py, profile.py,
ephemeral.py typing, receipts and read markers, account_data.py account data,
capabilities.py, push_rules.py push rules, directory.py aliases and
the published room directory, hierarchy.py spaces and timestamp_to_event, openid.py OpenID
tokens, keys.py end-to-end keys, to_device.py send-to-device messages, key_backup.py server-side
key backups, media.py the content repository, presence.py online status, tags.py room tags,
reports.py reports to operators; docs/client_api.md)
onto one aiohttp application, behind the CORS and Matrix-error middlewares; unknown
endpoints answer 404 M_UNRECOGNIZED.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.client_api.account_data import AccountData, AccountDataAPI
from homeserver.client_api.auth import AccountsAPI
from homeserver.client_api.capabilities import CapabilitiesAPI
from homeserver.client_api.common import Authenticator, cors_middleware, input_middleware
from homeserver.client_api.devices import DevicesAPI
from homeserver.client_api.directory import DirectoryAPI
from homeserver.client_api.ephemeral import EphemeralAPI
from homeserver.client_api.events import EventsAPI
from homeserver.client_api.hierarchy import HierarchyAPI
from homeserver.client_api.key_backup import KeyBackupAPI
from homeserver.client_api.keys import KeysAPI
from homeserver.client_api.media import MediaAPI
from homeserver.client_api.notifications import NotificationsAPI
from homeserver.client_api.openid import OpenIdAPI
from homeserver.client_api.presence import PresenceAPI
from homeserver.client_api.profile import ProfileAPI
from homeserver.client_api.profile_fanout import ProfileFanout, profile_fields
from homeserver.client_api.push_rules import PushRulesAPI
from homeserver.client_api.pushers import PushersAPI
from homeserver.client_api.relations import RelationsAPI
from homeserver.client_api.reports import ReportsAPI
from homeserver.client_api.rooms import RoomsAPI
from homeserver.client_api.search import SearchAPI
from homeserver.client_api.sync import SyncAPI
from homeserver.client_api.tags import TagsAPI
from homeserver.client_api.to_device import ToDeviceAPI, ToDeviceSync
from homeserver.client_api.upgrade import UpgradeAPI
from homeserver.client_api.user_directory import UserDirectoryAPI
from homeserver.config import Config
from homeserver.e2e.service import E2eKeys
from homeserver.http import error_middleware
from homeserver.media.preview import UrlPreviewer
from homeserver.media.repository import MediaRepository
from homeserver.metrics import Metrics
from homeserver.net.client import FederationClient
from homeserver.notifier import Notifier
from homeserver.presence.service import PresenceService
from homeserver.push.service import PushServices
from homeserver.rooms.backfill import Backfiller
from homeserver.rooms.directory import RoomDirectory
from homeserver.rooms.hierarchy import SpaceHierarchy
from homeserver.rooms.outbox import Outbox
from homeserver.rooms.persist import EventPersister
from homeserver.rooms.service import RoomService
from homeserver.rooms.space_walk import SpaceWalker
from homeserver.rooms.timestamps import TimestampLookup
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.events import EventStore
from homeserver.storage.key_backup import KeyBackupStore
from homeserver.storage.openid import OpenIdStore
from homeserver.storage.presence import PresenceStore
from homeserver.storage.registration_tokens import RegistrationTokenStore
from homeserver.storage.reports import ReportStore
from homeserver.storage.timeline import TimelineStore
from homeserver.storage.timestamps import TimestampStore
from homeserver.storage.to_device import ToDeviceStore
from homeserver.storage.users import UserStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier", Notifier)


def create_client_api_app(
    config: Config,
    *,
    users: UserStore,
    events: EventStore,
    persister: EventPersister,
    rooms: RoomService,
    sender: Outbox,
    federation: FederationClient,
    directory: RoomDirectory | None = None,
    metrics: Metrics | None = None,
    clock: Clock = SYSTEM_CLOCK,
    notifier: Notifier | None = None,
    e2e: E2eKeys | None = None,
    to_device: ToDeviceStore | None = None,
    media: MediaRepository | None = None,
    push: PushServices | None = None,
    presence: PresenceService | None = None,
) -> web.Application:
    cc = config.client
    # aiohttp's own bound sits above ours so that read_body answers M_TOO_LARGE itself.
    # input_middleware sits inside error_middleware, which turns its refusals into JSON.
    app = web.Application(
        middlewares=[cors_middleware, error_middleware, input_middleware], client_max_size=cc.max_body_bytes + 1024
    )
    auth = Authenticator(users)
    timeline = TimelineStore(events.db, events)
    # The server's one notifier (Services owns it; the persister, the room service and the
    # inbound pipeline tell it what happened): /sync long-polls wait on it.
    notifier = notifier if notifier is not None else persister.notifier
    app[NOTIFIER] = notifier
    tokens = RegistrationTokenStore(users.db)
    # End-to-end keys (e2e/service.py): one E2eKeys per server, made here when not given.
    e2e = e2e if e2e is not None else E2eKeys(config.server_name, events.db, notifier, sender, federation.request)
    app.add_routes(AccountsAPI(config.server_name, cc, users, auth, rooms, tokens=tokens, clock=clock,
                               e2e=e2e).routes())
    app.add_routes(DevicesAPI(cc, auth, users, clock=clock, e2e=e2e).routes())
    app.add_routes(KeysAPI.build(cc, auth, e2e, users, clock).routes())
    app.add_routes(RoomsAPI(cc, auth, rooms, events, timeline, directory, clock=clock).routes())
    if directory is not None:
        app.add_routes(DirectoryAPI(config.server_name, cc, auth, directory).routes())
    # History visibility for /messages, /event and /sync; backfill over federation for /messages.
    visibility = HistoryVisibility(events)
    backfiller = Backfiller(
        config.server_name, config.backfill, events, persister, rooms.remote.fetcher, clock=clock
    )
    app.add_routes(EventsAPI(cc, auth, rooms, events, timeline, users, backfiller=backfiller,
                             visibility=visibility, backfill_timeout=config.backfill.timeout,
                             clock=clock).routes())
    app.add_routes(RelationsAPI(auth, events, timeline, users, visibility, clock=clock).routes())
    app.add_routes(SearchAPI(cc, auth, events, timeline, users, visibility, clock=clock).routes())
    app.add_routes(UpgradeAPI(cc, auth, rooms, directory).routes())
    # Account data (and the m.fully_read marker) wakes the user's /sync long-polls.
    account_data = AccountData(AccountDataStore(events.db), notifier)
    # Push rules, notifications, pushers (push/service.py; not running when made here).
    push = push or PushServices.build(config.server_name, events.db, events, persister, notifier, clock=clock)
    # Send-to-device messages: stored per device, wake /sync, leave by EDU (the one sender).
    to_device = to_device or ToDeviceStore(events.db)
    app.add_routes(ToDeviceAPI(config.server_name, cc, auth, to_device, sender, notifier, metrics or Metrics(),
                               clock=clock).routes())
    app.add_routes(KeyBackupAPI(cc, auth, KeyBackupStore(events.db)).routes())
    # Presence (presence/service.py): one service per server, made here when not given.
    presence = presence or PresenceService(config.server_name, config.presence, PresenceStore(events.db), sender,
                                           notifier, metrics or Metrics(), clock)
    presence_api = PresenceAPI(config.server_name, cc, auth, users, presence)
    app.add_routes(presence_api.routes())
    app.add_routes(SyncAPI(cc, auth, users, events, timeline, rooms.memberships, rooms, notifier,
                           visibility=visibility, account_data=account_data.store, clock=clock, e2e=e2e,
                           to_device=ToDeviceSync(to_device), push=push.notifications,
                           presence=presence_api).routes())
    # Member events we build carry the user's profile; a profile change follows in the background.
    rooms.profile_lookup = profile_fields(users)
    fanout = ProfileFanout(rooms, clock=clock)
    app.on_cleanup.append(lambda _app: fanout.close())
    app.add_routes(ProfileAPI(config.server_name, cc, auth, users, rooms, federation, fanout=fanout).routes())
    app.add_routes(EphemeralAPI(config.server_name, cc, auth, events, timeline, sender, notifier,
                                account_data=account_data, clock=clock,
                                on_receipt=push.notifications.on_receipt,
                                on_activity=presence.user_active).routes())
    app.add_routes(AccountDataAPI(cc, auth, account_data).routes())
    app.add_routes(TagsAPI(cc, auth, account_data).routes())
    app.add_routes(ReportsAPI(cc, auth, events, timeline, visibility, ReportStore(events.db), clock=clock).routes())
    app.add_routes(CapabilitiesAPI(auth, config.rooms.default_room_version).routes())
    app.add_routes(UserDirectoryAPI(cc, auth, events).routes())
    app.add_routes(PushRulesAPI(cc, auth, push.rulebook, account_data).routes())
    app.add_routes(NotificationsAPI(auth, push.store, users, events, clock=clock).routes())
    app.add_routes(PushersAPI(cc, auth, push.store, events, push.pushers_changed, clock=clock).routes())
    walker = SpaceWalker(SpaceHierarchy(config.server_name, rooms), federation, clock=clock)
    timestamps = TimestampLookup(events, TimestampStore(events.db), rooms.remote.fetcher, backfiller.servers)
    app.add_routes(HierarchyAPI(auth, walker, timestamps, timeline).routes())
    app.add_routes(OpenIdAPI(config.server_name, cc, auth, OpenIdStore(events.db), clock=clock).routes())
    if media is not None:  # the media repository (client_api/media.py, homeserver/media/)
        previewer = (UrlPreviewer(config.media.url_preview, media, lambda: federation.session, federation.policy)
                     if config.media.url_preview.enabled else None)
        app.add_routes(MediaAPI(config.server_name, auth, media, clock=clock, previewer=previewer).routes())

    return app
