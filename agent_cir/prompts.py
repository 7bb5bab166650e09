"""Prompt templates: jinja2 files in ``prompts/``, hashed into every trace and cache key.

A template renders to one or more chat messages. A line that is exactly ``[system]`` or ``[user]``
starts a message of that role; text before the first marker belongs to a user message.
Templates are looked up by name (``rewrite_cot`` or ``rewrite_cot.j2``) in the packaged prompts folder,
or given as a path to a user's own file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from agent_cir.errors import AgentCirError
from agent_cir.hashing import text_hash

_ROLE_MARKERS = {"[system]": "system", "[user]": "user"}


class PromptError(AgentCirError, ValueError):
    """A prompt template could not be found or rendered."""


def prompts_dir() -> Path:
    """The shipped prompts: inside the installed wheel, or at the repository root in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "prompts", here.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise PromptError(f"no prompts folder found next to {here}; the installation is incomplete")


def available_prompts() -> list[str]:
    return sorted(p.stem for p in prompts_dir().glob("*.j2"))


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    path: Path
    source: str

    @property
    def hash(self) -> str:
        """sha256 of the template file's text: changes whenever a word of the prompt changes."""
        return text_hash(self.source)

    def render_messages(self, **variables: Any) -> list[tuple[str, str]]:
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
        try:
            text = env.from_string(self.source).render(**variables)
        except jinja2.UndefinedError as err:
            raise PromptError(f"prompt {self.path}: {err}; pass it when rendering") from None
        messages: list[tuple[str, list[str]]] = []
        for line in text.splitlines():
            role = _ROLE_MARKERS.get(line.strip())
            if role is not None:
                messages.append((role, []))
            else:
                if not messages:
                    messages.append(("user", []))
                messages[-1][1].append(line)
        rendered = [(role, "\n".join(lines).strip()) for role, lines in messages]
        return [(role, body) for role, body in rendered if body]

    def render(self, **variables: Any) -> str:
        """The whole prompt as one text (roles joined), for cache keys and traces."""
        return "\n\n".join(f"[{role}]\n{body}" for role, body in self.render_messages(**variables))


@functools.lru_cache(maxsize=128)
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def load_prompt(name_or_path: str | Path) -> PromptTemplate:
    """Find a template by packaged name (``rewrite_cot``) or by file path."""
    raw = str(name_or_path)
    path = Path(raw).expanduser()
    if not (path.suffix == ".j2" and path.is_file()):
        stem = raw[:-3] if raw.endswith(".j2") else raw
        path = prompts_dir() / f"{stem}.j2"
    if not path.is_file():
        raise PromptError(
            f"prompt template {raw!r} not found; packaged templates are: {', '.join(available_prompts())} "
            "(or give the path of your own .j2 file)"
        )
    return PromptTemplate(name=path.stem, path=path, source=_read(path.resolve()))
