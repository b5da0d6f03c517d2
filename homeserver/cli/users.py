"""Operators' user commands: ``user add|list|deactivate|reset-password`` and
``registration-token create|list|revoke`` (issue 18; to be written)."""

from __future__ import annotations

import argparse


def add_user_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    del sub
