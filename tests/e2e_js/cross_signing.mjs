// A bootstraps cross-signing (password UIA when asked); B sees A's cross-signing keys and the
// signature of A's device by A's self-signing key; a second upload (reset) is behind UIA.
import { Scenario, createEncryptedRoom, acceptInvite, waitJoined, passwordAuth, keysQuery } from "./lib.mjs";

const sc = new Scenario("cross_signing");
await sc.run(async () => {
    const a = await sc.step("login a", () => sc.login(sc.config.a));
    const b = await sc.step("login b", () => sc.login(sc.config.b));
    await sc.step("a bootstraps cross-signing", async () => {
        const record = {};
        await a.getCrypto().bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(a, record) });
        await sc.until("cross-signing ready", () => a.getCrypto().isCrossSigningReady());
        return { first_upload_asked_uia: Boolean(record.uia) };
    });
    await sc.step("share a room", async () => {
        const roomId = await createEncryptedRoom(a, [b.getUserId()]);
        await acceptInvite(sc, b, roomId);
        await waitJoined(sc, a, roomId, b.getUserId());
        return { room_id: roomId };
    });
    const aUser = a.getUserId(), aDevice = a.getDeviceId();
    await sc.step("b sees a's cross-signing keys", async () => {
        const keys = await sc.until("a's cross-signing keys at b", async () => {
            await b.getCrypto().userHasCrossSigningKeys(aUser, true);
            return await b.getCrypto().getUserCrossSigningKeys(aUser);
        });
        const status = await b.getCrypto().getUserVerificationStatus(aUser);
        return { has_master: Boolean(keys.master_key), has_self_signing: Boolean(keys.self_signing_key),
                 identity_needs_approval: Boolean(status.needsUserApproval) };
    });
    await sc.step("b sees a's device signed by a's self-signing key", async () => {
        const status = await sc.until("a's device signed by owner", async () => {
            const s = await b.getCrypto().getDeviceVerificationStatus(aUser, aDevice);
            return s && s.signedByOwner ? s : null;
        });
        const raw = await keysQuery(b, [aUser]);
        const ssk = raw.self_signing_keys && raw.self_signing_keys[aUser];
        const sskId = ssk && Object.keys(ssk.keys)[0];
        const dev = raw.device_keys && raw.device_keys[aUser] && raw.device_keys[aUser][aDevice];
        return {
            signed_by_owner: status.signedByOwner,
            raw_has_master: Boolean(raw.master_keys && raw.master_keys[aUser]),
            raw_device_signed_by_ssk: Boolean(dev && sskId && dev.signatures[aUser] && dev.signatures[aUser][sskId]),
        };
    });
    await sc.step("a's reset of cross-signing is behind UIA", async () => {
        const record = {};
        await a.getCrypto().bootstrapCrossSigning({ setupNewCrossSigning: true, authUploadDeviceSigningKeys: passwordAuth(a, record) });
        return { reset_asked_uia: Boolean(record.uia) };
    });
});
