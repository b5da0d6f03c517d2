"""The media repository: local store, thumbnails, and media over federation."""
