"""Small utilities shared by every package: an injectable clock, an LRU, keyed locks and
``batch_iter``. Nothing here knows about Matrix, the database or HTTP."""
