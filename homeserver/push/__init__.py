"""Push notifications: rules (``rules.py``), their evaluation (``evaluate.py``), the
per-event notification pass (``notify.py``) and delivery to push gateways (``sender.py``).
See docs/push.md."""
