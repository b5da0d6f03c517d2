"""Storage: one async database interface, two engines (SQLite, PostgreSQL), plain SQL."""
