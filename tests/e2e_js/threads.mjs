// Threads with Element's SDK, thread support on (as Element runs it): A creates a room and
// invites B; A sends a thread root, B replies in the thread; A's client shows the thread with
// B's reply, and its syncs raise no error (no unhandled rejection) while the room has a thread.
import { Scenario, acceptInvite, waitJoined, sendText } from "./lib.mjs";

const sc = new Scenario("threads");
await sc.run(async () => {
    const a = await sc.step("login a", () => sc.login(sc.config.a, { threadSupport: true }));
    const b = await sc.step("login b", () => sc.login(sc.config.b, { threadSupport: true }));
    const { room_id: roomId } = await sc.step("a creates room", () =>
        a.createRoom({ preset: "private_chat", invite: [b.getUserId()] }));
    await sc.step("b accepts invite", () => acceptInvite(sc, b, roomId));
    await waitJoined(sc, a, roomId, b.getUserId());
    const { event_id: rootId } = await sc.step("a sends root", () => sendText(a, roomId, "thread root"));
    await sc.step("b replies in the thread", async () => {
        await sc.until("root at b", () => b.getRoom(roomId)?.findEventById(rootId));
        const { event_id: eventId } = await b.sendMessage(roomId, rootId, { msgtype: "m.text", body: "in the thread" });
        return { event_id: eventId };
    });
    await sc.step("a sees the thread", async () => sc.until("thread at a", () => {
        const thread = a.getRoom(roomId)?.getThread(rootId);
        const last = thread && thread.lastReply();
        return last && last.getContent().body === "in the thread"
            && { replies: thread.length, last_reply: last.getContent().body };
    }));
    await sc.step("a's thread list", async () => {
        const threads = await a.createThreadListMessagesRequest(roomId, null, 10, "b");
        return { roots: threads.chunk.map((e) => e.event_id) };
    });
});
