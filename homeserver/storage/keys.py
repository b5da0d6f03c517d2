"""Store of remote servers' verify keys (the cache behind the key fetcher)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database


@dataclass(frozen=True, slots=True)
class StoredKey:
    server_name: str
    key_id: str
    verify_key: str  # unpadded base64
    valid_until_ts: int
    expired_ts: int | None


class KeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_key(self, server_name: str, key_id: str) -> StoredKey | None:
        row = await self._db.fetchone(
            "SELECT verify_key, valid_until_ts, expired_ts FROM server_keys"
            " WHERE server_name = ? AND key_id = ?",
            server_name,
            key_id,
        )
        if row is None:
            return None
        return StoredKey(server_name, key_id, row[0], int(row[1]), row[2])

    async def get_document(self, server_name: str) -> dict[str, Any] | None:
        """The server's last verified key document as received (both ``store_document``
        callers verified it), or None."""
        raw = await self._db.fetchval(
            "SELECT key_json FROM server_key_documents WHERE server_name = ?", server_name
        )
        if raw is None:
            return None
        doc = json.loads(raw)
        return doc if isinstance(doc, dict) else None

    async def store_document(
        self, server_name: str, document: dict[str, Any], keys: list[StoredKey], now_ms: int
    ) -> None:
        """Store a verified key document and its keys in one transaction."""
        async with self._db.transaction() as conn:
            await conn.execute(
                "DELETE FROM server_key_documents WHERE server_name = ?", server_name
            )
            await conn.execute(
                "INSERT INTO server_key_documents (server_name, valid_until_ts, fetched_ts, key_json)"
                " VALUES (?, ?, ?, ?)",
                server_name,
                int(document.get("valid_until_ts", 0)),
                now_ms,
                json.dumps(document),
            )
            for key in keys:
                await conn.execute(
                    "DELETE FROM server_keys WHERE server_name = ? AND key_id = ?",
                    key.server_name,
                    key.key_id,
                )
                await conn.execute(
                    "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts,"
                    " expired_ts, fetched_ts) VALUES (?, ?, ?, ?, ?, ?)",
                    key.server_name,
                    key.key_id,
                    key.verify_key,
                    key.valid_until_ts,
                    key.expired_ts,
                    now_ms,
                )
