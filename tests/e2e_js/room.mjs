// Two users on two servers: A creates an encrypted room and invites B; B accepts (crypto
// enabled: no error); each sends an encrypted message and the other decrypts it.
// With "direct": true in the config, the same as an encrypted direct chat (is_direct + m.direct).
import { Scenario, createEncryptedRoom, acceptInvite, waitJoined, waitDecrypted, sendText } from "./lib.mjs";

const sc = new Scenario(JSON.parse(process.argv[2] || "{}").direct ? "direct" : "room");
await sc.run(async () => {
    const direct = Boolean(sc.config.direct);
    const a = await sc.step("login a", () => sc.login(sc.config.a));
    const b = await sc.step("login b", () => sc.login(sc.config.b));
    const { room_id: roomId } = await sc.step("a creates encrypted room", async () => {
        const roomId = await createEncryptedRoom(a, [b.getUserId()], { direct });
        if (direct) await a.setAccountData("m.direct", { [b.getUserId()]: [roomId] });
        return { room_id: roomId };
    });
    await sc.step("b accepts invite", async () => {
        const { invite_is_direct: isDirect } = await acceptInvite(sc, b, roomId);
        if (direct) await b.setAccountData("m.direct", { [a.getUserId()]: [roomId] });
        // The SDK's own work after the join (device queries of the members) must not fail.
        await b.getCrypto().getUserDeviceInfo([a.getUserId(), b.getUserId()], true);
        return { invite_is_direct: isDirect };
    });
    await sc.step("encryption enabled on both sides", async () => {
        await waitJoined(sc, a, roomId, b.getUserId());
        await sc.until("encryption state on both", async () =>
            (await a.getCrypto().isEncryptionEnabledInRoom(roomId))
            && (await b.getCrypto().isEncryptionEnabledInRoom(roomId)));
        return {};
    });
    await sc.step("a -> b encrypted", async () => {
        await sendText(a, roomId, "secret from a");
        return await waitDecrypted(sc, b, roomId, "secret from a");
    });
    await sc.step("b -> a encrypted", async () => {
        await sendText(b, roomId, "secret from b");
        return await waitDecrypted(sc, a, roomId, "secret from b");
    });
    if (direct) {
        await sc.step("m.direct account data", async () => {
            const seen = await sc.until("m.direct on both", () => {
                const ea = a.getAccountData("m.direct"), eb = b.getAccountData("m.direct");
                return ea && eb && [ea.getContent(), eb.getContent()];
            });
            return { a_direct: seen[0], b_direct: seen[1] };
        });
    }
});
