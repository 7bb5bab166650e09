"""User-facing errors: each says what was wrong, where, and what to do. The CLI prints them without a traceback."""

from __future__ import annotations


class AgentCirError(Exception):
    """Base class of every error a user can fix (bad input, bad configuration, missing weights)."""
