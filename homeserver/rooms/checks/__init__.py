"""The checks on receipt of a PDU that need no room state (receipt.py: format, signatures,
content hash; pool.py: the helper processes that run them for large batches) and step 4
against an event's own auth events (auth.py)."""
