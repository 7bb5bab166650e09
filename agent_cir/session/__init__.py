"""Multi-turn sessions: ``Pipeline.session(...)`` -> :class:`Session` (``session.py``), its typed turn records and
storage (``turns.py``), and what the dialogue prompts receive (``dialogue.py``)."""

from agent_cir.session.session import Session
from agent_cir.session.turns import Reference, SessionError, SessionRecord, ShownResult, TurnRecord, load_session

__all__ = ["Reference", "Session", "SessionError", "SessionRecord", "ShownResult", "TurnRecord", "load_session"]
