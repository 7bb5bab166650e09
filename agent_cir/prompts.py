"""Prompt templates: jinja2 files in ``prompts/``, hashed into every trace and cache key.

A template is one or more chat messages. A line of the template *source* that is exactly ``[system]``,
``[user]`` or ``[assistant]`` starts a message of that role; text before the first marker belongs to a
user message. The source is split into its role parts first and each part is rendered on its own, so
whatever a variable holds (a modification text that says ``[system]``, a caption) stays data inside its
message and can never open a new one.

Templates render in jinja2's ``ImmutableSandboxedEnvironment``: a template can format the variables it is
given, but cannot reach Python internals (``__class__``, ``os.popen`` ...) or mutate its inputs.

Templates are looked up by name (``rewrite_cot`` or ``rewrite_cot.j2``) in the packaged prompts folder,
or given as a path to a user's own file. The file is read on every load and compiled parts are cached by
their text, so an edited template gets its new text and hash in a long-lived process (the demo).
"""

from __future__ import annotations

import functools
import operator
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from agent_cir.errors import AgentCirError
from agent_cir.hashing import text_hash

_ROLE_MARKERS = {"[system]": "system", "[user]": "user", "[assistant]": "assistant"}


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


def split_roles(source: str) -> list[tuple[str, str]]:
    """The template source cut at its role-marker lines: [(role, part source), ...], in order."""
    parts: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        role = _ROLE_MARKERS.get(line.strip())
        if role is not None:
            parts.append((role, []))
        else:
            if not parts:
                parts.append(("user", []))
            parts[-1][1].append(line)
    return [(role, "\n".join(lines)) for role, lines in parts]


RENDER_SECONDS = 2.0
"""Wall-clock budget of one prompt part's rendering; a prompt is a few KB and renders in milliseconds."""
RENDER_MAX_CHARS = 1_000_000
"""Longest text one prompt part may render to (far beyond any model's context window)."""
_MAX_REPEAT_ITEMS = 1_000_000
"""Largest ``"x" * n`` / ``[..] * n`` result and ``a ** b`` exponent a template may compute."""


class RenderBudgetError(PromptError):
    """A template ran past its rendering budget (time or output size)."""


class _Budget(threading.local):
    deadline: float | None = None
    source: str = ""


_BUDGET = _Budget()


def _check_budget() -> None:
    deadline = _BUDGET.deadline
    if deadline is not None and time.monotonic() > deadline:
        raise RenderBudgetError(
            f"prompt {_BUDGET.source} ran for more than {RENDER_SECONDS:g} s while rendering (nested loops?); "
            "a prompt template should only format the variables it is given"
        )


def _budgeted_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every ``{% for %}`` loop of a template iterates through here: the time budget is checked each item,
    so nested loops that produce no output still stop."""
    for item in iterable:
        _check_budget()
        yield item


class _BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with the budget checked at every call, attribute, item and repetition."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        _check_budget()
        if operator_name == "**":
            if isinstance(right, int) and abs(right) > 10_000 and not (isinstance(left, (int, float)) and abs(left) <= 1):
                raise RenderBudgetError(f"prompt {_BUDGET.source}: exponent {right} is too large for a template")
            return operator.pow(left, right)
        for count, other in ((right, left), (left, right)):
            if isinstance(count, int) and isinstance(other, (str, list, tuple)) and count * max(len(other), 1) > _MAX_REPEAT_ITEMS:
                raise RenderBudgetError(
                    f"prompt {_BUDGET.source}: repeating a value {count} times would make more than "
                    f"{_MAX_REPEAT_ITEMS:,} items"
                )
        return operator.mul(left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_budget()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_budget()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_budget()
        return super().getitem(obj, argument)


# One sandbox for every template: StrictUndefined so that a missing variable is an error, not "".
_ENV = _BudgetedSandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
_ENV.globals["_agent_cir_budgeted_iter"] = _budgeted_iter


@functools.lru_cache(maxsize=256)
def _compile(part_source: str) -> jinja2.Template:
    tree = _ENV.parse(part_source)
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Call(nodes.Name("_agent_cir_budgeted_iter", "load"), [loop.iter], [], None, None,
                               lineno=loop.lineno)
    return _ENV.from_string(tree)


def _render_bounded(template: jinja2.Template, source: str, variables: dict[str, Any]) -> str:
    """``template.render(**variables)`` within :data:`RENDER_SECONDS` and :data:`RENDER_MAX_CHARS`."""
    previous = (_BUDGET.deadline, _BUDGET.source)
    _BUDGET.deadline, _BUDGET.source = time.monotonic() + RENDER_SECONDS, source
    try:
        pieces: list[str] = []
        length = 0
        for piece in template.generate(**variables):
            length += len(piece)
            if length > RENDER_MAX_CHARS:
                raise RenderBudgetError(
                    f"prompt {source} rendered more than {RENDER_MAX_CHARS:,} characters; a prompt template "
                    "should only format the variables it is given (check its loops)"
                )
            _check_budget()
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _BUDGET.deadline, _BUDGET.source = previous


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    path: Path
    source: str
    _parts: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parts", tuple(split_roles(self.source)))

    @property
    def hash(self) -> str:
        """sha256 of the template text actually used: changes whenever a word of the prompt changes."""
        return text_hash(self.source)

    @property
    def roles(self) -> list[str]:
        return [role for role, _ in self._parts]

    def render_messages(self, **variables: Any) -> list[tuple[str, str]]:
        """[(role, text), ...]: each role part rendered separately; empty messages are left out."""
        rendered: list[tuple[str, str]] = []
        for role, part in self._parts:
            try:
                body = _render_bounded(_compile(part), str(self.path), variables)
            except RenderBudgetError:
                raise
            except jinja2.UndefinedError as err:
                raise PromptError(f"prompt {self.path}: {err}; pass it when rendering") from err
            except SecurityError as err:
                raise PromptError(
                    f"prompt {self.path} tried something templates may not do ({err}); prompts render in a "
                    "sandbox: use only the variables passed to the template and jinja2 filters"
                ) from err
            except jinja2.TemplateSyntaxError as err:
                raise PromptError(
                    f"prompt {self.path}, {role} part, line {err.lineno}: {err.message}. A jinja2 block "
                    "({% if %}, {% for %}) must open and close within one [system]/[user] part"
                ) from err
            except jinja2.TemplateError as err:
                raise PromptError(f"prompt {self.path} could not be rendered: {err}") from err
            body = body.strip()
            if body:
                rendered.append((role, body))
        return rendered

    def render(self, **variables: Any) -> str:
        """The whole prompt as one text (roles joined), for display; cache keys use the message list."""
        return "\n\n".join(f"[{role}]\n{body}" for role, body in self.render_messages(**variables))


def read_template(path: Path) -> str:
    """A template file's current text. Read on every load (templates are a few KB): an edited file gives
    its new text and hash at once, in a long-lived process too; compiled parts are cached by content."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PromptError(f"prompt template {path} cannot be read ({err}); check the file") from err


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
    resolved = path.resolve()
    source = read_template(resolved)
    template = PromptTemplate(name=path.stem, path=path, source=source)
    try:
        for _, part in template._parts:
            _compile(part)
    except jinja2.TemplateSyntaxError as err:
        raise PromptError(
            f"prompt {path}: line {err.lineno} of a role part: {err.message}. A jinja2 block "
            "({% if %}, {% for %}) must open and close within one [system]/[user] part"
        ) from err
    return template
