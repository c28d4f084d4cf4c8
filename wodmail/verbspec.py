"""What a verb declares about itself, and the registry that everything else derives from.

Each module in verbs/ holds one `VerbSpec` (its name, aliases, arguments, checks, hook and
help) and one `async def run(job, services) -> str`. The `VerbRegistry` collects them by
name and refuses a duplicate name or alias. The parser (wodmail.command), the doors'
checks (wodmail.intake), `wodmail send`, the CLI's help, the workshops file's hook names
and the README's verb table all read the registry: adding a verb is one new module in
verbs/ and one line in verbs/__init__.py.

This module is the bottom layer: it imports nothing of wodmail at run time, so the parser
can read the verbs' declarations without loading the services, HTTP or the queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from wodmail.command import Command
    from wodmail.journal import JobRun
    from wodmail.location import Workshop
    from wodmail.services import Services

#: What stands for a value in a verb's operand forms (VerbSpec.operands): a job's id, a
#: student's number, a workshop's name (wodmail.command checks each), and, last in a form,
#: the rest of the Subject (1 to REST_WORDS words, kept as they are: PLAN's command).
OPERAND_PLACEHOLDERS = ("ID", "N", "NAME", "WORDS...")
REST = "WORDS..."
REST_WORDS = 8

Check = Callable[["Command", "Workshop"], "str | None"]
"""A verb's own check of a command against its workshop, at the door: the reason to refuse
the command (a 554 / exit 65), or None to accept it."""


@dataclass(frozen=True)
class VerbSpec:
    """One verb's declaration: the Subject it takes, what it needs, what it does.

    Every command mail's Subject is `VERB <student> <customer-id> [<customer-email>]` and
    its body's first line the workshop (the mail is the API, see wodmail.command); a verb
    chooses which of those it takes. A verb about the host rather than a student (HELP,
    STATUS, DRAIN: `student` False) takes its own words instead, in the forms it declares
    (`operands`, e.g. `STATUS job 12`).
    """

    name: str
    """The verb as the Subject's first word, in capitals, e.g. CLEANUP."""
    description: str
    """What the verb does, in a few sentences (the CLI's help, the README's table)."""
    aliases: tuple[str, ...] = ()
    """Other words taken for this verb, e.g. DELETE for CLEANUP."""
    student_range: bool = False
    """The student may be a range `<min>,<max>` (each student of it is one line of work)."""
    customer_email: bool = False
    """The customer's e-mail address may follow the customer id."""
    workshop_required: bool = True
    """The body must name the workshop; False: it may be empty."""
    reset_only: bool = False
    """Only for a `reset` workshop of the workshops file; refused for any other."""
    hook: str | None = None
    """The name of the workshop hook (playbook) the verb runs, if any, e.g. `create`."""
    checks: tuple[Check, ...] = ()
    """The verb's own checks at the door (`Check`), after the ones the fields above imply."""
    student: bool = True
    """The Subject names the student (or range) and the customer, the body the workshop: a
    verb that acts on students. False: a verb about the host, the queue or a workshop (HELP,
    STATUS, DRAIN): its Subject takes `operands` instead, its body is not read, and its jobs
    wait in a line of their own (wodmail.command.NO_STUDENT), one at a time, in arrival order."""
    operands: tuple[str, ...] = ()
    """A verb without a student: the forms of the words after it, e.g. `job ID`, `workshop
    NAME`, `all`. A lower-case word stands for itself; ID and N for a number, NAME for a
    workshop (OPERAND_PLACEHOLDERS). The verb alone is taken too, unless `operands_required`."""
    operands_required: bool = False
    """The verb alone is refused: it needs one of its `operands` forms (PLAN)."""
    reads_body: bool = False
    """A verb without a student whose body's first line, if any, is the command's workshop
    (PLAN: the planned command's); otherwise such a verb's body is not read."""
    refused_while_drained: bool = False
    """Refused at the door (451, a temporary reason, recorded) while the command's workshop
    is drained (DRAIN, wodmail.queue.drains): CREATE."""
    plannable: bool = False
    """Every effect of its `run` goes through `job.step` and `job.callbacks` (as crash recovery
    needs anyway), and nothing else it calls changes anything: PLAN may run it against a
    journal that records the steps instead of doing them (wodmail.plan)."""

    def __post_init__(self) -> None:
        for word in (self.name, *self.aliases):
            if not word.isascii() or not word.isalpha() or not word.isupper():
                raise ValueError(f"verb name {word!r} is not a word in capitals")
        if self.reset_only and not self.workshop_required:
            raise ValueError(f"{self.name} is for reset workshops only: it needs a workshop")
        if not self.student and (
            self.student_range or self.customer_email or self.workshop_required or self.reset_only or self.hook
        ):
            raise ValueError(f"{self.name} takes no student: no range, customer e-mail, workshop body or hook")
        if self.student and (self.operands or self.operands_required or self.reads_body):
            raise ValueError(f"{self.name} takes a student: its arguments are the student and the customer")
        for form in self.operands:
            for word in form.split() or [""]:
                if word not in OPERAND_PLACEHOLDERS and not (word.isascii() and word.isalpha() and word.islower()):
                    raise ValueError(f"{self.name}: operand form {form!r} holds {word!r}")
            if REST in form.split()[:-1]:
                raise ValueError(f"{self.name}: operand form {form!r}: {REST} comes last")

    @property
    def most_arguments(self) -> int:
        """How many words may follow the verb in the Subject."""
        if not self.student:
            sizes = (len(form.split()) + (REST_WORDS - 1 if REST in form else 0) for form in self.operands)
            return max(sizes, default=0)
        return 3 if self.customer_email else 2

    @property
    def operand_choices(self) -> str:
        """A verb without a student: its forms, `job ID | student N | workshop NAME`."""
        return " | ".join(self.operands)

    @property
    def argument_description(self) -> str:
        """The Subject's arguments and the body, in one line."""
        if not self.student:
            choices = self.operand_choices
            words = (choices if self.operands_required else f"[{choices}]") if choices else "no arguments"
            return f"{words}; body: " + ("the workshop (optional)" if self.reads_body else "not read")
        student = "<stdid>|<min>,<max>" if self.student_range else "<stdid>"
        email = " [<customer-email>]" if self.customer_email else ""
        if self.reset_only:
            body = "the workshop (a reset workshop)"
        elif self.workshop_required:
            body = "the workshop"
        else:
            body = "the workshop (optional)"
        return f"{student} <customer-id>{email}; body: {body}"

    @property
    def usage(self) -> str:
        """`NAME (ALIAS) arguments`, e.g. for help texts."""
        aliases = f" ({', '.join(self.aliases)})" if self.aliases else ""
        return f"{self.name}{aliases} {self.argument_description}"

    def refusal(self, command: Command, workshop: Workshop) -> str | None:
        """Why this verb refuses `command` for `workshop`, or None (reset_only, then `checks`)."""
        if self.reset_only and not workshop.reset:
            return f"{self.name} refused: {workshop.name} is not a reset workshop"
        for check in self.checks:
            reason = check(command, workshop)
            if reason is not None:
                return reason
        return None


class Verb(Protocol):
    """The contract of every module in verbs/: its declaration and its one coroutine."""

    @property
    def spec(self) -> VerbSpec: ...

    def run(self, job: JobRun, services: Services) -> Awaitable[str]:
        """Do the verb's steps for `job.command`; return a one-line outcome."""
        ...


class VerbRegistry(Mapping[str, Verb]):
    """The verbs by name, in the order given; a name or alias used twice is an error."""

    def __init__(self, verbs: Iterable[Verb]) -> None:
        self._verbs: dict[str, Verb] = {}
        self._words: dict[str, Verb] = {}
        for verb in verbs:
            spec = verb.spec
            for word in (spec.name, *spec.aliases):
                if word in self._words:
                    raise ValueError(f"two verbs are named {word}")
                self._words[word] = verb
            self._verbs[spec.name] = verb

    def __getitem__(self, name: str) -> Verb:
        return self._verbs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._verbs)

    def __len__(self) -> int:
        return len(self._verbs)

    def with_verbs(self, *verbs: Verb) -> VerbRegistry:
        """A new registry: these verbs and `verbs` (a site's own, a test's)."""
        return VerbRegistry([*self._verbs.values(), *verbs])

    def lookup(self, word: str) -> VerbSpec | None:
        """The spec a Subject's first word names (any case, aliases too), or None.

        ASCII only: Unicode case mapping upper-cases the long s (U+017F) to S, "RE\u017fET" to RESET."""
        if not word.isascii():
            return None
        verb = self._words.get(word.upper())
        return verb.spec if verb is not None else None

    def spec(self, name: str) -> VerbSpec:
        """The spec of the verb called `name` (a command's verb); KeyError if none."""
        return self._verbs[name].spec

    @property
    def specs(self) -> list[VerbSpec]:
        return [verb.spec for verb in self._verbs.values()]

    @property
    def words(self) -> str:
        """Every word taken as a verb: `CREATE, CLEANUP, DELETE, RESET, PURGE`."""
        return ", ".join(self._words)

    @property
    def choices(self) -> str:
        """The verbs with their aliases, for help: `CREATE, CLEANUP (DELETE), RESET or PURGE`."""
        shown = [f"{s.name} ({', '.join(s.aliases)})" if s.aliases else s.name for s in self.specs]
        return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"

    @property
    def range_verbs(self) -> str:
        """The verbs that take a student range, for a refusal: `RESET`, `RESET or FOO`."""
        names = [spec.name for spec in self.specs if spec.student_range]
        return " or ".join(names) or "no verb"

    @property
    def hook_names(self) -> tuple[str, ...]:
        """The workshop hooks the verbs run (a workshops file's `hooks` keys)."""
        return tuple(spec.hook for spec in self.specs if spec.hook is not None)

    def markdown_table(self) -> str:
        """The README's verb table."""
        lines = ["| Verb | Subject arguments; body | Hook | What it does |", "| --- | --- | --- | --- |"]
        for spec in self.specs:
            name = spec.name + "".join(f" ({alias})" for alias in spec.aliases)
            hook = f"`{spec.hook}`" if spec.hook else "-"
            arguments = spec.argument_description.replace("|", "\\|")  # a table cell: even in code
            lines.append(f"| {name} | `{arguments}` | {hook} | {spec.description} |")
        return "\n".join(lines) + "\n"


_shipped: VerbRegistry | None = None


def shipped_verbs() -> VerbRegistry:
    """The verbs wodmail ships (wodmail.verbs, the verbs/ folder), loaded on first use."""
    global _shipped  # noqa: PLW0603 - loaded once, on first use: verbs/ imports this module
    if _shipped is None:
        from wodmail.verbs import REGISTRY  # type: ignore[import-untyped,unused-ignore]

        if not isinstance(REGISTRY, VerbRegistry):
            raise TypeError("wodmail.verbs.REGISTRY is not a VerbRegistry")
        _shipped = REGISTRY
    return _shipped
