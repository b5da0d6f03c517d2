// What a new Element user does, with Element's SDK on two servers (A on one, B on the other):
// profiles with an uploaded avatar (resolved and thumbnailed through authenticated media), a
// named room and its invite, member names and the room summary, a mention with its unread and
// highlight counts cleared by a read receipt, a thread, an edit, presence, a tag and a search.
// Independent steps do not stop the scenario: one run shows every failing step.
import { deflateSync } from "node:zlib";
import { Scenario, sdk, waitJoined, sleep } from "./lib.mjs";

const sc = new Scenario("new_user");
const NAME_A = "Alice Newuser";
const NAME_B = "Bob Newuser";
const ROOM_NAME = "Project Kestrel";

// A step whose failure is recorded but does not end the scenario.
async function soft(name, fn) {
    try { return await sc.step(name, fn); } catch { return undefined; }
}

// A w x h RGB PNG (a gradient), made here so the test needs no image file.
function png(w, h) {
    const crcTable = Array.from({ length: 256 }, (_, n) => {
        let c = n;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        return c >>> 0;
    });
    const crc = (buf) => {
        let c = 0xffffffff;
        for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
        return (c ^ 0xffffffff) >>> 0;
    };
    const chunk = (type, data) => {
        const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
        const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
        const sum = Buffer.alloc(4); sum.writeUInt32BE(crc(body));
        return Buffer.concat([len, body, sum]);
    };
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4);
    ihdr[8] = 8; ihdr[9] = 2; // 8-bit RGB
    const raw = Buffer.alloc((w * 3 + 1) * h);
    for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
            const o = y * (w * 3 + 1) + 1 + x * 3;
            raw[o] = (x * 4) & 0xff; raw[o + 1] = (y * 4) & 0xff; raw[o + 2] = 128;
        }
    }
    return Buffer.concat([
        Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
        chunk("IHDR", ihdr), chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0)),
    ]);
}

// The kind and pixel size of a PNG, JPEG or WebP/GIF image; null when not an image.
function imageSize(buf) {
    if (buf.length > 24 && buf.readUInt32BE(0) === 0x89504e47) {
        return { type: "png", width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
    }
    if (buf.length > 4 && buf[0] === 0xff && buf[1] === 0xd8) {
        let i = 2;
        while (i + 9 < buf.length) {
            if (buf[i] !== 0xff) { i++; continue; }
            const marker = buf[i + 1];
            if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
                return { type: "jpeg", height: buf.readUInt16BE(i + 5), width: buf.readUInt16BE(i + 7) };
            }
            i += 2 + buf.readUInt16BE(i + 2);
        }
        return { type: "jpeg" };
    }
    if (buf.length > 10 && buf.toString("ascii", 0, 3) === "GIF") {
        return { type: "gif", width: buf.readUInt16LE(6), height: buf.readUInt16LE(8) };
    }
    if (buf.length > 12 && buf.toString("ascii", 8, 12) === "WEBP") return { type: "webp" };
    return null;
}

async function download(client, url) {
    const resp = await fetch(url, { headers: { Authorization: `Bearer ${client.getAccessToken()}` } });
    if (resp.status !== 200) throw new Error(`GET ${new URL(url).pathname} -> ${resp.status}`);
    return { bytes: Buffer.from(await resp.arrayBuffer()), type: resp.headers.get("content-type") };
}

// The last room summary each room of ``client`` received in /sync (the SDK's Room.summary event).
function watchSummaries(client) {
    const last = {};
    client.on(sdk.ClientEvent.Room, (room) => {
        room.on(sdk.RoomEvent.Summary, (summary) => { last[room.roomId] = summary; });
    });
    return last;
}

const counts = (room) => ({
    total: room.getUnreadNotificationCount(sdk.NotificationCountType.Total),
    highlight: room.getUnreadNotificationCount(sdk.NotificationCountType.Highlight),
});

await sc.run(async () => {
    const opts = { threadSupport: true, lazyLoadMembers: true };
    const a = await sc.step("login a", () => sc.login(sc.config.a, opts));
    const b = await sc.step("login b", () => sc.login(sc.config.b, opts));
    const aId = a.getUserId();
    const bId = b.getUserId();
    const image = png(64, 64);
    const summariesA = watchSummaries(a);
    const summariesB = watchSummaries(b);

    const mxc = await sc.step("a uploads an avatar and sets its profile", async () => {
        const { content_uri: uri } = await a.uploadContent(image, { type: "image/png", name: "avatar.png" });
        await a.setDisplayName(NAME_A);
        await a.setAvatarUrl(uri);
        return uri;
    });
    await sc.step("b sets its display name", () => b.setDisplayName(NAME_B));

    const { room_id: roomId } = await sc.step("a creates a named room and invites b", () =>
        a.createRoom({
            preset: "private_chat", name: ROOM_NAME, invite: [bId],
            initial_state: mxc ? [{ type: "m.room.avatar", state_key: "", content: { url: mxc } }] : [],
        }));

    await sc.step("b sees the invite with the room name and a's name", async () => {
        let seen = {};
        try {
            return await sc.until("invite at b", () => {
                const room = b.getRoom(roomId);
                if (!room || room.getMyMembership() !== "invite") return null;
                const inviter = room.getMember(aId);
                seen = { room_name: room.name, inviter_name: inviter && inviter.name };
                return room.name === ROOM_NAME && inviter && inviter.name === NAME_A && seen;
            });
        } catch (e) {
            throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
        }
    });

    await soft("b's invite shows the room avatar", async () => sc.until("room avatar at b", () => {
        const url = b.getRoom(roomId)?.getMxcAvatarUrl();
        return url === mxc && { url };
    }, 5000));

    let dmId;
    await soft("b sees a direct-chat invite named after a", async () => {
        ({ room_id: dmId } = await a.createRoom({ preset: "trusted_private_chat", is_direct: true, invite: [bId] }));
        let seen = {};
        try {
            return await sc.until("direct invite at b", () => {
                const room = b.getRoom(dmId);
                if (!room || room.getMyMembership() !== "invite") return null;
                seen = { room_name: room.name, dm_inviter: room.getDMInviter() };
                return room.name === NAME_A && seen.dm_inviter === aId && seen;
            });
        } catch (e) {
            throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
        }
    });

    await sc.step("b joins", async () => {
        await b.joinRoom(roomId);
        await sc.until("b's join", () => b.getRoom(roomId)?.getMyMembership() === "join");
        await waitJoined(sc, a, roomId, bId);
    });

    await soft("both see the display names and the summary", async () => {
        let seen = {};
        try {
            return await sc.until("names and counts", () => {
                const ra = a.getRoom(roomId);
                const rb = b.getRoom(roomId);
                seen = {
                    a_sees_b: ra.getMember(bId)?.name, b_sees_a: rb.getMember(aId)?.name,
                    a_joined_count: ra.getJoinedMemberCount(), b_joined_count: rb.getJoinedMemberCount(),
                    b_room_name: rb.name,
                    a_summary: summariesA[roomId] || null, b_summary: summariesB[roomId] || null,
                };
                return seen.a_sees_b === NAME_B && seen.b_sees_a === NAME_A && seen.a_joined_count === 2
                    && seen.b_joined_count === 2 && seen.b_room_name === ROOM_NAME
                    && seen.a_summary?.["m.joined_member_count"] === 2
                    && seen.b_summary?.["m.joined_member_count"] === 2 && seen;
            }, 15000);
        } catch (e) {
            throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
        }
    });

    // A room without a name: the summary's heroes name it (the spec requires them then).
    if (dmId) {
        await soft("b joins the direct chat: the summary's heroes name it", async () => {
            await b.joinRoom(dmId);
            await waitJoined(sc, a, dmId, bId);
            let seen = {};
            try {
                return await sc.until("heroes", () => {
                    seen = {
                        a_summary: summariesA[dmId] || null, b_summary: summariesB[dmId] || null,
                        a_name: a.getRoom(dmId)?.name, b_name: b.getRoom(dmId)?.name,
                        b_membership: b.getRoom(dmId)?.getMyMembership(),
                    };
                    const heroes = (x) => (x && x["m.heroes"]) || [];
                    return heroes(seen.a_summary).includes(bId) && heroes(seen.b_summary).includes(aId)
                        && seen.a_name === NAME_B && seen.b_name === NAME_A && seen;
                }, 15000);
            } catch (e) {
                throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
            }
        });
    }

    await soft("b resolves a's avatar through authenticated media", async () => {
        const member = await sc.until("a's avatar at b", () => {
            const m = b.getRoom(roomId)?.getMember(aId);
            return m && m.getMxcAvatarUrl() === mxc && m;
        }, 10000);
        const full = b.mxcUrlToHttp(member.getMxcAvatarUrl(), undefined, undefined, undefined, false, true, true);
        const thumbUrl = b.mxcUrlToHttp(member.getMxcAvatarUrl(), 32, 32, "crop", false, true, true);
        const got = await download(b, full);
        if (!got.bytes.equals(image)) throw new Error(`download differs: ${got.bytes.length} bytes, ${got.type}`);
        const thumb = await download(b, thumbUrl);
        const size = imageSize(thumb.bytes);
        if (!size || size.width !== 32 || size.height !== 32) {
            throw new Error(`thumbnail not a 32x32 image: ${JSON.stringify(size)} (${thumb.type})`);
        }
        return { download_path: new URL(full).pathname, thumbnail: size, thumbnail_type: thumb.type };
    });

    const mention = await soft("b mentions a: a has notification and highlight counts", async () => {
        const { event_id: eventId } = await b.sendMessage(roomId, {
            msgtype: "m.text", body: `${NAME_A}: the kestrel report is ready`, "m.mentions": { user_ids: [aId] },
        });
        let seen = {};
        try {
            return await sc.until("counts at a", () => {
                const room = a.getRoom(roomId);
                seen = counts(room);
                return room.findEventById(eventId) && seen.total > 0 && seen.highlight > 0
                    && { event_id: eventId, ...seen };
            }, 15000);
        } catch (e) {
            throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
        }
    });

    if (mention) {
        await soft("a's read receipt clears the counts", async () => {
            const room = a.getRoom(roomId);
            await a.sendReadReceipt(room.findEventById(mention.event_id), sdk.ReceiptType.Read);
            // Past the SDK's local echo: the counts of the server's next syncs stay at zero.
            const syncs = [];
            const onSync = (state) => { syncs.push(state); };
            a.on("sync", onSync);
            let seen = {};
            try {
                await sc.until("two syncs after the receipt, counts at zero", () => {
                    seen = counts(room);
                    return syncs.length >= 2 && seen.total === 0 && seen.highlight === 0;
                }, 20000);
            } catch (e) {
                throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
            } finally {
                a.off("sync", onSync);
            }
            return seen;
        });
    }

    const root = await sc.step("a sends a message", () => a.sendTextMessage(roomId, "kestrel thread root"));
    await soft("b replies in a thread: a's SDK shows it", async () => {
        await sc.until("root at b", () => b.getRoom(roomId)?.findEventById(root.event_id));
        await b.sendMessage(roomId, root.event_id, { msgtype: "m.text", body: "kestrel in the thread" });
        return await sc.until("thread at a", () => {
            const thread = a.getRoom(roomId)?.getThread(root.event_id);
            const last = thread && thread.lastReply();
            return last && last.getContent().body === "kestrel in the thread"
                && { replies: thread.length, last_reply: last.getContent().body };
        }, 15000);
    });

    await soft("a's thread has unread counts, and a threaded receipt clears them", async () => {
        const room = a.getRoom(roomId);
        const threadCounts = () => ({
            total: room.getThreadUnreadNotificationCount(root.event_id, sdk.NotificationCountType.Total),
            highlight: room.getThreadUnreadNotificationCount(root.event_id, sdk.NotificationCountType.Highlight),
        });
        let seen = {};
        try {
            await sc.until("thread counts", () => { seen = threadCounts(); return seen.total > 0; }, 10000);
        } catch (e) {
            throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
        }
        const before = seen;
        const reply = room.getThread(root.event_id).lastReply();
        await a.sendReadReceipt(reply, sdk.ReceiptType.Read);  // threaded: the SDK adds thread_id
        const syncs = [];
        const onSync = (state) => { syncs.push(state); };
        a.on("sync", onSync);
        try {
            await sc.until("thread counts at zero after a sync", () => {
                seen = threadCounts();
                return syncs.length >= 1 && seen.total === 0;
            }, 15000);
        } catch (e) {
            throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
        } finally {
            a.off("sync", onSync);
        }
        return { before, after: seen };
    });

    const edit = await soft("b edits a message: a sees the new content", async () => {
        const { event_id: original } = await b.sendTextMessage(roomId, "kestrel first draft");
        await sc.until("original at a", () => a.getRoom(roomId)?.findEventById(original));
        await b.sendMessage(roomId, {
            msgtype: "m.text", body: "* kestrel final draft",
            "m.new_content": { msgtype: "m.text", body: "kestrel final draft" },
            "m.relates_to": { rel_type: "m.replace", event_id: original },
        });
        let body;
        try {
            return await sc.until("edit at a", () => {
                const ev = a.getRoom(roomId)?.findEventById(original);
                body = ev && ev.getContent().body;
                return body === "kestrel final draft" && { body, original, replaced: ev.replacingEventId() };
            }, 15000);
        } catch (e) {
            throw new Error(`${e.message}: body ${JSON.stringify(body)}`);
        }
    });

    await soft("a's presence and status reach b", async () => {
        await a.setPresence({ presence: "online", status_msg: "flying kestrels" });
        let seen = {};
        try {
            return await sc.until("presence at b", () => {
                const u = b.getUser(aId);
                seen = { presence: u && u.presence, status: u && u.presenceStatusMsg };
                return seen.presence === "online" && seen.status === "flying kestrels" && seen;
            }, 10000);
        } catch (e) {
            throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
        }
    });

    await soft("a tags the room as a favourite", async () => {
        await a.setRoomTag(roomId, "m.favourite", { order: 0.5 });
        return await sc.until("tag at a", () => {
            const tags = a.getRoom(roomId)?.tags || {};
            return "m.favourite" in tags && { tags };
        }, 10000);
    });

    await soft("a searches and finds b's message", async () => {
        const found = await a.searchRoomEvents({ term: "report" });
        const bodies = found.results.map((r) => r.context.getEvent().getContent().body);
        if (!bodies.some((t) => t && t.includes("kestrel report"))) {
            throw new Error(`search results: ${JSON.stringify(bodies)} (count ${found.count})`);
        }
        return { count: found.count, bodies };
    });

    await soft("a's media config", async () => {
        const config = await a.getMediaConfig(true);
        if (!(config["m.upload.size"] > 0)) throw new Error(JSON.stringify(config));
        return { upload_size: config["m.upload.size"] };
    });

    await soft("b sees a's read receipt", async () => sc.until("a's receipt at b", () => {
        const upTo = b.getRoom(roomId)?.getEventReadUpTo(aId);
        return upTo && { up_to: upTo };
    }, 10000));

    await soft("b sees a typing", async () => {
        await a.sendTyping(roomId, true, 10000);
        return await sc.until("typing at b", () => b.getRoom(roomId)?.getMember(aId)?.typing && { typing: true }, 10000);
    });

    if (mention) {
        await soft("a reacts: b sees the reaction", async () => {
            await a.sendEvent(roomId, "m.reaction", {
                "m.relates_to": { rel_type: "m.annotation", event_id: mention.event_id, key: "👍" },
            });
            return await sc.until("reaction at b", () => {
                const rels = b.getRoom(roomId)?.relations.getChildEventsForEvent(mention.event_id, "m.annotation", "m.reaction");
                const keys = rels ? rels.getSortedAnnotationsByKey() : null;
                return keys && keys.length && { keys: keys.map(([k, evs]) => [k, evs.size]) };
            }, 10000);
        });
    }

    await soft("b redacts a message: a sees it redacted", async () => {
        const { event_id: eventId } = await b.sendTextMessage(roomId, "kestrel oops");
        await sc.until("message at a", () => a.getRoom(roomId)?.findEventById(eventId));
        await b.redactEvent(roomId, eventId);
        return await sc.until("redaction at a", () => {
            const ev = a.getRoom(roomId)?.findEventById(eventId);
            return ev && ev.isRedacted() && { body: ev.getContent().body ?? null };
        }, 10000);
    });

    await soft("b looks up a's profile", async () => {
        const profile = await b.getProfileInfo(aId);
        if (profile.displayname !== NAME_A || profile.avatar_url !== mxc) throw new Error(JSON.stringify(profile));
        return profile;
    });

    await soft("b finds a in the user directory", async () => {
        // The directory may be updated in the background (Synapse's is): searched until found.
        let found;
        try {
            return await sc.until("a in b's user directory", async () => {
                found = await b.searchUserDirectory({ term: "Alice Newuser" });
                const ids = found.results.map((r) => r.user_id);
                return ids.includes(aId) && { ids };
            }, 10000);
        } catch (e) {
            throw new Error(`${e.message}: ${JSON.stringify(found)}`);
        }
    });

    let lobby;
    await soft("b finds a's public room over federation and joins it by alias", async () => {
        const server = aId.slice(aId.indexOf(":") + 1);
        const local = `kestrel-lobby-${Date.now()}`;
        ({ room_id: lobby } = await a.createRoom({
            preset: "public_chat", visibility: "public", room_alias_name: local, name: "Kestrel Lobby",
        }));
        const found = await sc.until("room in a's directory", async () => {
            const resp = await b.publicRooms({ server, limit: 20 });
            return resp.chunk.find((r) => r.room_id === lobby);
        }, 10000);
        const { roomId: joined } = await b.joinRoom(`#${local}:${server}`);
        if (joined !== lobby) throw new Error(`joined ${joined}, expected ${lobby}`);
        await waitJoined(sc, a, lobby, bId);
        return { room_name: found.name, alias: found.canonical_alias, members: found.num_joined_members };
    });

    if (lobby) {
        // As in Element: B joins the space, whose home lists its rooms; one of them is unknown
        // to B's server, which asks A's server over federation (the spec's /hierarchy).
        await soft("b joins a's space and sees its rooms, one known only to a's server", async () => {
            const server = aId.slice(aId.indexOf(":") + 1);
            const { room_id: annex } = await a.createRoom({ preset: "public_chat", name: "Kestrel Annex" });
            const { room_id: space } = await a.createRoom({
                preset: "public_chat", name: "Kestrel Space", creation_content: { type: "m.space" },
                initial_state: [lobby, annex].map((r) => ({ type: "m.space.child", state_key: r, content: { via: [server] } })),
            });
            await b.joinRoom(space, { viaServers: [server] });
            const found = await b.getRoomHierarchy(space, 10, 2);
            const names = found.rooms.map((r) => r.name).sort();
            if (names.join() !== "Kestrel Annex,Kestrel Lobby,Kestrel Space") throw new Error(JSON.stringify(found));
            return { rooms: names };
        });
    }

    if (dmId) {
        await soft("a mutes the direct chat: b's message there does not notify", async () => {
            await a.addPushRule("global", "override", dmId, {
                actions: [], conditions: [{ kind: "event_match", key: "room_id", pattern: dmId }],
            });
            // The rule is applied by the server: wait until a's client has it (Element's mute).
            await sc.until("rule at a", () => a.pushRules?.global?.override?.some((r) => r.rule_id === dmId), 10000);
            const { event_id: eventId } = await b.sendTextMessage(dmId, "kestrel muted");
            const room = await sc.until("muted message at a", () => {
                const r = a.getRoom(dmId);
                return r && r.findEventById(eventId) && r;
            }, 10000);
            const syncs = [];
            const onSync = (state) => { syncs.push(state); };
            a.on("sync", onSync);
            try {
                await sc.until("one more sync", () => syncs.length >= 1, 15000);
            } finally {
                a.off("sync", onSync);
            }
            const seen = counts(room);
            if (seen.total !== 0 || seen.highlight !== 0) throw new Error(`counts ${JSON.stringify(seen)}`);
            return seen;
        });
    }

    // Element started again (a new device): its initial sync alone shows what happened.
    await soft("a's new device: the initial sync shows names, edit, thread, tag and no unread", async () => {
        const a2 = await sc.login(sc.config.a, opts);
        let seen = {};
        try {
            return await sc.until("state at a's new device", () => {
                const room = a2.getRoom(roomId);
                if (!room) return null;
                const edited = edit && room.findEventById(edit.original);
                const thread = room.getThread(root.event_id);
                seen = {
                    room_name: room.name, b_name: room.getMember(bId)?.name,
                    edited_body: edited ? edited.getContent().body : null,
                    thread_last: thread?.lastReply()?.getContent().body ?? null,
                    tags: Object.keys(room.tags), ...counts(room),
                };
                return seen.room_name === ROOM_NAME && seen.b_name === NAME_B
                    && seen.edited_body === "kestrel final draft" && seen.thread_last === "kestrel in the thread"
                    && seen.tags.includes("m.favourite") && seen.highlight === 0 && seen;
            }, 15000);
        } catch (e) {
            throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
        }
    });

    // Last, as they change the rooms: an upgrade B follows, and A ignoring B.
    if (lobby) {
        await soft("a upgrades the lobby: b follows the tombstone to the new room", async () => {
            const server = aId.slice(aId.indexOf(":") + 1);
            const { replacement_room: next } = await a.upgradeRoom(lobby, "12");
            const tombstone = await sc.until("tombstone at b", () => {
                const ev = b.getRoom(lobby)?.currentState.getStateEvents("m.room.tombstone", "");
                return ev && ev.getContent().replacement_room;
            }, 10000);
            if (tombstone !== next) throw new Error(`tombstone points to ${tombstone}, not ${next}`);
            await b.joinRoom(next, { viaServers: [server] });
            await waitJoined(sc, a, next, bId);
            let predecessor;
            try {
                await sc.until("predecessor at b", () => {
                    predecessor = b.getRoom(next)?.findPredecessor();
                    return predecessor && predecessor.roomId === lobby;
                }, 10000);
            } catch (e) {
                const create = b.getRoom(next)?.currentState.getStateEvents("m.room.create", "");
                throw new Error(`${e.message}: ${JSON.stringify(predecessor)}, create ${JSON.stringify(create?.getContent())}`);
            }
            return { version: b.getRoom(next).getVersion(), new_name: b.getRoom(next).name };
        });
    }

    await soft("a ignores b: b's next message does not reach a's timeline", async () => {
        await a.setIgnoredUsers([bId]);
        await sc.until("ignore list at a", () => a.getIgnoredUsers().includes(bId), 10000);
        const { event_id: eventId } = await b.sendTextMessage(roomId, "kestrel unheard");
        // Until A's server has it (/event still serves it; if it did not, a few seconds' wait).
        let arrived = false;
        try {
            arrived = Boolean(await sc.until("b's message on a's server", async () => {
                try { return await a.fetchRoomEvent(roomId, eventId); } catch { return null; }
            }, 5000));
        } catch { /* hidden from /event too */ }
        const syncs = [];
        const onSync = (state) => { syncs.push(state); };
        a.on("sync", onSync);
        const { event_id: mine } = await a.sendTextMessage(roomId, "kestrel after ignoring");
        try {
            await sc.until("a's own message and a sync", () => syncs.length >= 1
                && a.getRoom(roomId)?.findEventById(mine), 10000);
        } finally {
            a.off("sync", onSync);
        }
        if (a.getRoom(roomId)?.findEventById(eventId)) throw new Error("b's message is in a's timeline");
        return { hidden: true, event_served: arrived };
    });
    await sleep(200);
});
