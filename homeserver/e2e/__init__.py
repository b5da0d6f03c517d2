"""End-to-end encryption keys (the spec's "End-to-End Encryption" module and the device-list
parts of "Device Management"): ``validate.py`` checks what clients and servers upload and
bounds it, ``service.py`` (``E2eKeys``) stores and answers keys for the client API and the
federation API, announces device-list changes (the notifier for /sync, the one sender for
other servers) and takes in other servers' announcements.
"""
