// A sets up secret storage and key backup (as Element's "set up recovery"), sends in an
// encrypted room; a new device of A, given the recovery key, restores the backup and decrypts
// the old message. A's first device is stopped first, so the backup is the only way.
import { Scenario, createEncryptedRoom, acceptInvite, waitJoined, waitDecrypted, sendText, passwordAuth } from "./lib.mjs";

const sc = new Scenario("backup");
await sc.run(async () => {
    let recovery = null;
    const cryptoCallbacks = {
        getSecretStorageKey: async ({ keys }) => {
            const keyId = Object.keys(keys).find((k) => recovery && k === recovery.keyId) || Object.keys(keys)[0];
            return recovery && keyId ? [keyId, recovery.key.privateKey] : null;
        },
        cacheSecretStorageKey: (keyId, _info, privateKey) => {
            if (recovery) recovery.keyId = keyId;
            else recovery = { keyId, key: { privateKey } };
        },
    };
    const a1 = await sc.step("login a", () => sc.login(sc.config.a, { cryptoCallbacks }));
    const b = await sc.step("login b", () => sc.login(sc.config.b));
    await sc.step("a sets up cross-signing, secret storage and key backup", async () => {
        const crypto = a1.getCrypto();
        await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(a1) });
        const key = await crypto.createRecoveryKeyFromPassphrase();
        recovery = { keyId: null, key };
        await crypto.bootstrapSecretStorage({
            createSecretStorageKey: async () => key,
            setupNewSecretStorage: true,
            setupNewKeyBackup: true,
        });
        const version = await sc.until("active backup", () => crypto.getActiveSessionBackupVersion());
        return { version };
    });
    const { room_id: roomId } = await sc.step("encrypted room with b", async () => {
        const roomId = await createEncryptedRoom(a1, [b.getUserId()]);
        await acceptInvite(sc, b, roomId);
        await waitJoined(sc, a1, roomId, b.getUserId());
        return { room_id: roomId };
    });
    await sc.step("old message sent and read by b", async () => {
        await sendText(a1, roomId, "old message");
        return await waitDecrypted(sc, b, roomId, "old message");
    });
    await sc.step("room key reaches the backup", async () => {
        const version = await a1.getCrypto().getActiveSessionBackupVersion();
        const keys = await sc.until("keys in backup", async () => {
            const r = await a1.http.authedRequest("GET", "/room_keys/keys", { version });
            return Object.keys(r.rooms || {}).length ? r : null;
        });
        return { rooms: Object.keys(keys.rooms) };
    });
    sc.stop(a1);
    const a2 = await sc.step("login a (new device)", () => sc.login(sc.config.a, { cryptoCallbacks }));
    await sc.step("new device restores the backup", async () => {
        const crypto = a2.getCrypto();
        await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
        const check = await crypto.checkKeyBackupAndEnable();
        const result = await crypto.restoreKeyBackup();
        return { backup_version: check && check.backupInfo && check.backupInfo.version,
                 imported: result.imported, total: result.total };
    });
    await sc.step("new device decrypts the old message", async () => {
        return await waitDecrypted(sc, a2, roomId, "old message");
    });
});
