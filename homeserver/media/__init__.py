"""The media repository: uploads, downloads and thumbnails (docs/media.md).

``repository.MediaRepository`` is the one object the client API (and the federation
media endpoints) use: it streams bytes into the content-addressed file store
(``files.py``), keeps the metadata in ``storage/media.py``, and makes thumbnails
(``thumbnails.py``, Pillow). ``policy.py`` holds the pure rules for serving (media IDs,
file names, Content-Disposition, security headers).
"""
