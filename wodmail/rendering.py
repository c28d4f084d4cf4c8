"""Rendering a workshop's templates: Jinja's environments and what wodmail adds to them.

The rendering matches what Ansible's `template` module did for the platform this replaces
(Jinja2, `trim_blocks=True`, `lstrip_blocks=False`, `newline_sequence='\\n'`, the
trailing newlines of the source file kept (`newlines_at_end` counts them), `None`
rendered as an empty string, and `hostvars[inventory_hostname]['KEY']` resolving to the
variable `KEY`: `render_context`), with three changes:

- it is sandboxed (`ImmutableSandboxedEnvironment`): a template cannot reach Python
  internals or change the variables;
- it is strict: an undefined variable is an error naming the file, the line and the
  variable (`render_failure`; only the optional names given to `template_environments`
  may be left undefined);
- in a notebook every inserted value is escaped for a JSON string (the notebook
  environment's finalize), so a value holding quotes, backslashes or newlines cannot
  break the notebook; `always_valid_json` tells which notebooks no value can break (the
  others are checked after each render). A value a site already escaped for the
  original backend, which inserted values raw, is inserted as it is
  (`is_already_escaped`): escaping it again would show its backslashes to students.

A template that is only text and lookups renders through `Substitution`, without running
Jinja's compiled code. No error message ever carries a variable's value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, ClassVar, cast

import jinja2
from jinja2 import Undefined, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

__all__ = [
    "CODE_FORMAT",
    "DEFAULT_INVENTORY_HOSTNAME",
    "Substitution",
    "always_valid_json",
    "escape_for_json_string",
    "is_already_escaped",
    "newlines_at_end",
    "render_context",
    "render_failure",
    "substitution_of",
    "template_environments",
]

#: The value of `inventory_hostname` when the variables do not set one.
DEFAULT_INVENTORY_HOSTNAME = "localhost"

#: Changes whenever what the environments generate changes (their settings, finalize, ...):
#: part of each cached template's name, so older code is never loaded.
CODE_FORMAT = "wodmail-templates-2"

#: What json.dumps(ensure_ascii=False) escapes in a string: quote, backslash, controls.
_JSON_SPECIAL = re.compile(r'[\x00-\x1f"\\]')
#: Values shorter than this are not scrubbed from error details (they would mangle words).
_SCRUB_MIN_LENGTH = 4


class _StudentVariables(dict[str, object]):
    """The student's variables as `hostvars[inventory_hostname]` shows them.

    A distinct type only so that a missing key in it reads "undefined variable 'KEY'".
    """


class _WorkshopUndefined(Undefined):
    """Jinja's StrictUndefined, except for the names in `optional_names`, which behave as a
    plain Undefined (render as "", iterate as empty, are false).

    Its message names the variable ("undefined variable 'X'") rather than Jinja's
    "'X' is undefined", and a missing `hostvars[inventory_hostname]` key reads the same.
    """

    __slots__ = ()
    optional_names: ClassVar[frozenset[str]] = frozenset()

    @property
    def _is_optional(self) -> bool:
        return (
            self._undefined_hint is None
            and self._undefined_exception is UndefinedError
            and (self._undefined_obj is missing or isinstance(self._undefined_obj, _StudentVariables))
            and self._undefined_name in self.optional_names
        )

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        if self._undefined_obj is missing or isinstance(self._undefined_obj, _StudentVariables):
            return f"undefined variable {self._undefined_name!r}"
        return super()._undefined_message

    def __str__(self) -> str:
        if self._is_optional:
            return ""
        self._fail_with_undefined_error()

    def __iter__(self) -> Iterator[Any]:
        if self._is_optional:
            return iter(())
        self._fail_with_undefined_error()

    def __len__(self) -> int:
        if self._is_optional:
            return 0
        self._fail_with_undefined_error()

    def __bool__(self) -> bool:
        if self._is_optional:
            return False
        self._fail_with_undefined_error()

    def __eq__(self, other: object) -> bool:
        if self._is_optional:
            return type(self) is type(other)
        self._fail_with_undefined_error()

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        if self._is_optional:
            return id(type(self))
        self._fail_with_undefined_error()


def _undefined_class(optional_names: frozenset[str]) -> type[Undefined]:
    """A `_WorkshopUndefined` that lets `optional_names` be undefined."""
    return cast(
        "type[Undefined]",
        type(
            "WorkshopUndefined",
            (_WorkshopUndefined,),
            {"__slots__": (), "optional_names": optional_names},
        ),
    )


def template_environments(
    optional_variables: Iterable[str] = (),
) -> tuple[ImmutableSandboxedEnvironment, ImmutableSandboxedEnvironment]:
    """The sandboxed, strict environments for text files and for notebooks, in that order.

    `optional_variables`: names a template may use undefined (they render as ""); every
    other undefined name is an error. Change CODE_FORMAT with any setting here.
    """
    common: dict[str, Any] = {
        "undefined": _undefined_class(frozenset(optional_variables)),
        "autoescape": False,
        "trim_blocks": True,
        "lstrip_blocks": False,
        "newline_sequence": "\n",
        "keep_trailing_newline": False,
        "auto_reload": False,
    }
    return (
        ImmutableSandboxedEnvironment(finalize=_finalize_text, **common),
        ImmutableSandboxedEnvironment(finalize=_finalize_json_string, **common),
    )


def _finalize_text(value: object) -> object:
    """Insert values as they are, None as "" (what Ansible's templating did)."""
    return "" if value is None else value


def _finalize_json_string(value: object) -> str:
    """Insert a value escaped for the inside of a JSON string (notebooks), None as ""."""
    if value is None:
        return ""
    return escape_for_json_string(str(value))


#: An escaped quote or an escaped backslash: what a site writes when it escapes a value.
_ESCAPED_QUOTE_OR_BACKSLASH = re.compile(r'\\["\\]')


def is_already_escaped(text: str) -> bool:
    """Whether `text` is a value a site already escaped for the inside of a JSON string.

    True when both hold: it holds an escaped quote or an escaped backslash (the two-character
    sequences `\\"` or `\\\\`), and inserted as it is between two quotes it makes a valid
    JSON string (every quote escaped, every backslash the start of a JSON escape, no control
    character). Such a value was written for the original backend, which inserted values
    raw: inserted raw here too, it gives the same notebook. A value with other escapes only
    (`\\n`, `\\t`: a Windows path such as C:\\temp) is not taken as escaped.
    """
    if _ESCAPED_QUOTE_OR_BACKSLASH.search(text) is None:
        return False
    try:
        json.loads(f'"{text}"')
    except ValueError:
        return False
    return True


def escape_for_json_string(text: str) -> str:
    """`text` as it goes inside a JSON string: escaped (quote, backslash, control characters),
    unless it needs nothing or a site already escaped it (`is_already_escaped`)."""
    if _JSON_SPECIAL.search(text) is None:  # the common case, and 40% of a render's time
        return text
    if "\\" in text and is_already_escaped(text):
        return text
    return json.dumps(text, ensure_ascii=False)[1:-1]


#: What any value becomes once escaped for a JSON string, reduced to its most telling
#: part: valid inside a string, invalid anywhere else in JSON.
_ESCAPED_PROBE = '\\"x'


def always_valid_json(tree: jinja2.nodes.Template) -> bool:
    """Whether every render of notebook template `tree` is valid JSON, whatever the values.

    True when the template is only text and `{{ expressions }}` (no statements, which could
    add or drop structure), the text is JSON, and every expression lies inside a JSON string:
    each is replaced by the escaped probe `\\"x`, which parses only inside a string. Values
    are escaped by the notebook environment's finalize, so they can never leave it.
    """
    probe: list[str] = []
    for node in tree.body:
        if not isinstance(node, jinja2.nodes.Output):
            return False
        for child in node.nodes:
            if isinstance(child, jinja2.nodes.TemplateData):
                probe.append(child.data)
            else:
                probe.append(_ESCAPED_PROBE)
    try:
        json.loads("".join(probe))
    except ValueError:
        return False
    return True


#: The expressions a `Substitution` evaluates itself: lookups with no side effect.
_LOOKUP_NODES = (jinja2.nodes.Name, jinja2.nodes.Const, jinja2.nodes.Getitem, jinja2.nodes.Getattr)


@dataclass(frozen=True, slots=True)
class Substitution:
    """A template that is only text and `{{ lookups }}` (a name, a constant, `a[b]`, `a.b`),
    rendered without running its compiled code: each distinct lookup is evaluated once per
    student, the way the compiled code would (`str(finalize(value))`, the environment's
    sandboxed getitem/getattr, Undefined for a missing name), and the values are joined with
    the text between them. Output is the same text, in a tenth of the time; any error makes
    the caller render with the compiled template instead, whose error names the line.
    """

    texts: tuple[str, ...]
    """The text before each lookup, and after the last: one more than `lookups`."""
    lookups: tuple[str, ...]
    """Each lookup's key (its node's dump) in `expressions`."""
    expressions: Mapping[str, jinja2.nodes.Expr]

    def render(self, env: jinja2.Environment, context: Mapping[str, object], values: dict[str, str]) -> str:
        """The rendered text; `values` memoises lookups across the files of one render."""
        parts = [self.texts[0]]
        for key, text in zip(self.lookups, self.texts[1:], strict=True):
            value = values.get(key)
            if value is None:
                raw = _evaluate(env, self.expressions[key], context)
                value = values[key] = str(env.finalize(raw) if env.finalize else raw)
            parts.append(value)
            parts.append(text)
        return "".join(parts)


def _evaluate(env: jinja2.Environment, node: jinja2.nodes.Expr, context: Mapping[str, object]) -> object:
    if isinstance(node, jinja2.nodes.Name):
        value = context.get(node.name, missing)
        if value is missing:
            value = env.globals.get(node.name, missing)
        return env.undefined(name=node.name) if value is missing else value
    if isinstance(node, jinja2.nodes.Const):
        return node.value
    if isinstance(node, jinja2.nodes.Getitem):
        return env.getitem(_evaluate(env, node.node, context), _evaluate(env, node.arg, context))
    assert isinstance(node, jinja2.nodes.Getattr)
    return env.getattr(_evaluate(env, node.node, context), node.attr)


def _is_lookup(node: jinja2.nodes.Node) -> bool:
    if isinstance(node, (jinja2.nodes.Name, jinja2.nodes.Const)):
        return True
    if isinstance(node, jinja2.nodes.Getitem):
        return _is_lookup(node.node) and _is_lookup(node.arg)
    if isinstance(node, jinja2.nodes.Getattr):
        return _is_lookup(node.node)
    return False


def substitution_of(tree: jinja2.nodes.Template) -> Substitution | None:
    """`tree` as a `Substitution`, or None when it holds anything but text and lookups."""
    texts = [""]
    lookups: list[str] = []
    expressions: dict[str, jinja2.nodes.Expr] = {}
    for node in tree.body:
        if not isinstance(node, jinja2.nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, jinja2.nodes.TemplateData):
                texts[-1] += child.data
            elif isinstance(child, _LOOKUP_NODES) and _is_lookup(child):
                key = repr(child)
                expressions.setdefault(key, child)
                lookups.append(key)
                texts.append("")
            else:
                return None
    return Substitution(tuple(texts), tuple(lookups), MappingProxyType(expressions))


def newlines_at_end(text: str) -> int:
    """How many '\\n' end `text` (Ansible puts back those that Jinja drops)."""
    return len(text) - len(text.rstrip("\n"))


def _template_line(traceback: TracebackType | None, filename: str) -> int | None:
    """The line of the innermost frame of template `filename` in `traceback`."""
    line = None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == filename:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def _scrub(text: str, variables: Mapping[str, object]) -> str:
    """`text` with every variable value that occurs in it replaced by a placeholder."""
    for key, value in variables.items():
        if not isinstance(value, str) or len(value) < _SCRUB_MIN_LENGTH:
            continue
        # as it is, and as repr() and JSON write it (Jinja's messages use repr)
        for form in (value, repr(value)[1:-1], json.dumps(value)[1:-1]):
            text = text.replace(form, f"<value of {key}>")
    return text


def render_failure(where: str, exc: BaseException, variables: Mapping[str, object]) -> str:
    """The StepFailed message for an error raised while rendering the file `where`."""
    line = _template_line(exc.__traceback__, where)
    at = f"{where} line {line}" if line is not None else where
    if isinstance(exc, SecurityError):
        detail = f"refused by the template sandbox: {exc}"
    elif isinstance(exc, UndefinedError):
        detail = str(exc)
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return f"{at}: {_scrub(detail, variables)}"


def render_context(variables: Mapping[str, object]) -> dict[str, object]:
    """What templates see: `variables`, `inventory_hostname` and `hostvars[inventory_hostname]`."""
    facts = _StudentVariables(variables)
    host = str(facts.get("inventory_hostname", DEFAULT_INVENTORY_HOSTNAME))
    context: dict[str, object] = dict(facts)
    context.setdefault("inventory_hostname", host)
    context.setdefault("hostvars", {host: facts})
    return context
