// Shared driver for the scenarios: acts as Element does with matrix-js-sdk and its Rust crypto.
//
// A scenario script is run as `node <scenario>.mjs '<json>'` where the JSON names the users:
//   {"a": {"baseUrl": ..., "userId": ..., "password": ...}, "b": {...}, "timeoutMs": 60000}
// It prints one JSON object on stdout: {"scenario", "steps": [{"name", "ok", "error"?, ...}],
// "http_errors": [[method, path, status], ...], "ok"}. SDK logging goes to stderr.

// Node 20: matrix-js-sdk 43 uses Promise.withResolvers (Node 22).
if (!Promise.withResolvers) {
    Promise.withResolvers = function () {
        let resolve, reject;
        const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
        return { promise, resolve, reject };
    };
}

// The SDK logs through console: keep stdout for the JSON result.
for (const level of ["log", "info", "debug", "warn", "error", "trace"]) {
    console[level] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
logger.setLevel(process.env.E2E_JS_LOG || "warn");

export { sdk };

export const ENCRYPTION = { algorithm: "m.megolm.v1.aes-sha2" };

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Scenario {
    constructor(name) {
        this.name = name;
        this.config = JSON.parse(process.argv[2] || "{}");
        this.steps = [];
        this.httpErrors = [];
        this.clients = [];
        this.unhandled = [];
        this.deadline = Date.now() + (this.config.timeoutMs || 60000);
        process.on("unhandledRejection", (e) => { this.unhandled.push(String(e && e.stack || e)); });
    }

    // Time left for one wait, bounded by the scenario's whole budget.
    budget(ms) {
        return Math.max(0, Math.min(ms, this.deadline - Date.now()));
    }

    // Runs one step; its result (an object merged into the step) or error is recorded.
    async step(name, fn) {
        const entry = { name, ok: false };
        this.steps.push(entry);
        try {
            const out = await fn();
            if (out && Object.getPrototypeOf(out) === Object.prototype) Object.assign(entry, out);
            entry.ok = true;
            return out;
        } catch (e) {
            entry.error = describe(e);
            throw new StepFailed(name, e);
        }
    }

    fetchFn() {
        return async (url, init) => {
            const resp = await fetch(url, init);
            if (process.env.E2E_JS_TRACE && String(url).includes("/sync")) {
                const body = await resp.clone().text();
                (await import("node:fs")).appendFileSync(process.env.E2E_JS_TRACE, `${url}\n${body}\n`);
            }
            if (resp.status >= 400) {
                const u = new URL(url instanceof Request ? url.url : String(url));
                this.httpErrors.push([(init && init.method) || "GET", u.pathname, resp.status]);
            }
            return resp;
        };
    }

    // Logs in with the password (a new device each time), starts crypto and sync, like Element.
    // ``threadSupport``: the SDK's thread support on (it then reads /relations and /threads).
    // ``lazyLoadMembers``: members lazily loaded, as Element does (the room summary then counts).
    async login(user, { cryptoCallbacks, threadSupport = false, lazyLoadMembers = false } = {}) {
        const bare = sdk.createClient({ baseUrl: user.baseUrl, fetchFn: this.fetchFn() });
        const resp = await bare.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: user.userId },
            password: user.password,
            initial_device_display_name: "e2e_js",
        });
        bare.stopClient();
        const client = sdk.createClient({
            baseUrl: user.baseUrl,
            fetchFn: this.fetchFn(),
            userId: resp.user_id,
            deviceId: resp.device_id,
            accessToken: resp.access_token,
            cryptoCallbacks: cryptoCallbacks || {},
        });
        client.password = user.password;
        await client.initRustCrypto({ useIndexedDB: false });
        this.clients.push(client);
        const prepared = waitEvent(client, "sync", (state) => state === "PREPARED", this.budget(30000));
        // Element long-polls for 30 s; 5 s here, because a server stopping at the end of a test
        // waits for the /sync long-polls still open (their client gone) to time out.
        await client.startClient({ initialSyncLimit: 20, pollTimeout: 5000, threadSupport, lazyLoadMembers });
        await prepared;
        return client;
    }

    stop(client) {
        client.stopClient();
        this.clients = this.clients.filter((c) => c !== client);
    }

    // Polls ``check`` (sync or async) until it returns a truthy value; throws after ``ms``.
    async until(what, check, ms = 20000) {
        const end = Date.now() + this.budget(ms);
        for (;;) {
            const v = await check();
            if (v) return v;
            if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
            await sleep(100);
        }
    }

    async finish() {
        for (const c of this.clients) c.stopClient();
        const result = {
            scenario: this.name,
            ok: this.steps.length > 0 && this.steps.every((s) => s.ok) && this.unhandled.length === 0,
            steps: this.steps,
            http_errors: this.httpErrors,
            unhandled: this.unhandled,
        };
        process.stdout.write(JSON.stringify(result) + "\n");
        process.exit(0);
    }

    // Runs the body, then prints the result whatever happened.
    async run(body) {
        const timer = setTimeout(() => {
            this.steps.push({ name: "scenario timeout", ok: false, error: "whole-scenario timeout" });
            this.finish();
        }, this.budget(this.config.timeoutMs || 60000) + 2000);
        try {
            await body(this);
        } catch (e) {
            if (!(e instanceof StepFailed)) this.steps.push({ name: "unexpected", ok: false, error: describe(e) });
        }
        clearTimeout(timer);
        await this.finish();
    }
}

class StepFailed extends Error {
    constructor(name, cause) {
        super(`${name}: ${describe(cause)}`);
    }
}

export function describe(e) {
    if (e && e.httpStatus) return `HTTP ${e.httpStatus} ${e.errcode || ""} ${e.message || ""}`.trim();
    return String((e && e.message) || e);
}

export function waitEvent(emitter, event, predicate, ms) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { emitter.off(event, on); reject(new Error(`timed out waiting for ${event}`)); }, ms);
        const on = (...args) => {
            if (predicate(...args)) { clearTimeout(timer); emitter.off(event, on); resolve(args); }
        };
        emitter.on(event, on);
    });
}

// A user-interactive-auth callback doing the password stage, as Element does when asked.
export function passwordAuth(client, record) {
    return async (makeRequest) => {
        try {
            const r = await makeRequest(null);
            if (record) record.uia = false;
            return r;
        } catch (e) {
            if (e.httpStatus !== 401 || !e.data || !e.data.flows) throw e;
            if (record) record.uia = true;
            return await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: client.getUserId() },
                password: client.password,
                session: e.data.session,
            });
        }
    };
}

export async function createEncryptedRoom(client, invite, { direct = false } = {}) {
    const { room_id: roomId } = await client.createRoom({
        preset: direct ? "trusted_private_chat" : "private_chat",
        is_direct: direct || undefined,
        invite,
        initial_state: [{ type: "m.room.encryption", state_key: "", content: ENCRYPTION }],
    });
    return roomId;
}

// Accepts the invite as Element does, once the invite has come down /sync.
export async function acceptInvite(sc, client, roomId) {
    let invite;
    try {
        invite = await sc.until(`invite to ${roomId}`, () => {
            const room = client.getRoom(roomId);
            const me = room && room.getMember(client.getUserId());
            return room && room.getMyMembership() === "invite" && me && me.events.member;
        });
    } catch (e) {
        const room = client.getRoom(roomId);
        const me = room && room.getMember(client.getUserId());
        throw new Error(`${e.message} (room known: ${Boolean(room)}, membership: ${room && room.getMyMembership()}, `
            + `own member event: ${Boolean(me && me.events.member)}, sync state: ${client.getSyncState()})`);
    }
    await client.joinRoom(roomId);
    await sc.until(`own join in ${roomId}`, () => {
        const room = client.getRoom(roomId);
        return room && room.getMyMembership() === "join";
    });
    return { invite_is_direct: Boolean(invite.getContent().is_direct) };
}

export async function waitJoined(sc, client, roomId, userId) {
    await sc.until(`${userId} joined ${roomId}`, () => {
        const room = client.getRoom(roomId);
        const m = room && room.getMember(userId);
        return m && m.membership === "join";
    });
}

// Waits until an event with this body is in the room's timeline and decrypted; returns facts.
export async function waitDecrypted(sc, client, roomId, body, ms = 30000) {
    let last = null;
    try {
        return await sc.until(`decrypted "${body}"`, () => {
            const room = client.getRoom(roomId);
            if (!room) return null;
            for (const ev of room.getLiveTimeline().getEvents()) {
                if (ev.getWireType() !== "m.room.encrypted") continue;
                if (ev.isDecryptionFailure()) last = ev.decryptionFailureReason || "decryption failure";
                if (ev.getType() === "m.room.message" && ev.getContent().body === body) {
                    return { event_id: ev.getId(), sender: ev.getSender(), encrypted: true };
                }
            }
            return null;
        }, ms);
    } catch (e) {
        throw new Error(`${e.message}${last ? ` (last failure: ${last})` : " (no encrypted event seen)"}`);
    }
}

export async function sendText(client, roomId, body) {
    const { event_id: eventId } = await client.sendTextMessage(roomId, body);
    return { event_id: eventId };
}

// The raw /keys/query answer for ``userIds``, as seen by ``client``.
export async function keysQuery(client, userIds) {
    const device_keys = Object.fromEntries(userIds.map((u) => [u, []]));
    return await client.http.authedRequest("POST", "/keys/query", undefined, { device_keys });
}
