// A second device of B (same user, new login) receives the room keys by to-device and decrypts
// a message A sends after it appeared; A learns of the new device through device_lists.
import { Scenario, createEncryptedRoom, acceptInvite, waitJoined, waitDecrypted, sendText } from "./lib.mjs";

const sc = new Scenario("second_device");
await sc.run(async () => {
    const a = await sc.step("login a", () => sc.login(sc.config.a));
    const b1 = await sc.step("login b (first device)", () => sc.login(sc.config.b));
    const { room_id: roomId } = await sc.step("encrypted room, b joined", async () => {
        const roomId = await createEncryptedRoom(a, [b1.getUserId()]);
        await acceptInvite(sc, b1, roomId);
        await waitJoined(sc, a, roomId, b1.getUserId());
        return { room_id: roomId };
    });
    await sc.step("first message reaches b's first device", async () => {
        await sendText(a, roomId, "before the second device");
        return await waitDecrypted(sc, b1, roomId, "before the second device");
    });
    const b2 = await sc.step("login b (second device)", () => sc.login(sc.config.b));
    await sc.step("a sees b's second device (device_lists)", async () => {
        const userId = b2.getUserId(), deviceId = b2.getDeviceId();
        await sc.until("b's second device in a's device list", async () => {
            const map = await a.getCrypto().getUserDeviceInfo([userId]);
            return map.get(userId) && map.get(userId).has(deviceId);
        });
        return { device_id: deviceId };
    });
    await sc.step("second device decrypts a new message", async () => {
        await sendText(a, roomId, "for both of b's devices");
        const got = await waitDecrypted(sc, b2, roomId, "for both of b's devices");
        await waitDecrypted(sc, b1, roomId, "for both of b's devices");
        return got;
    });
    await sc.step("second device's own message decrypted by a", async () => {
        await sendText(b2, roomId, "from b's second device");
        return await waitDecrypted(sc, a, roomId, "from b's second device");
    });
});
