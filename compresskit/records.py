"""A pass's record: the typed facts it leaves for the report, and how it summarises itself.

A pass declares its record class (``record_cls``, a :class:`PassRecord` with
``extra="forbid"``) and leaves facts with ``ctx.record(**facts)`` while it runs; the
pipeline runner validates them into that class when the node finishes, so a misspelled
or mistyped fact fails the run instead of vanishing from the report. ``summary()`` turns
a record into :class:`Line` and :class:`Table` blocks, which the markdown, the HTML and
the terminal render the same way, whatever the pass.

>>> class HalveRecord(PassRecord):
...     layers: int
...     def summary(self) -> list[Block]:
...         return [Line(text=f"halved {self.layers} layers")]
>>> HalveRecord.from_facts({"layers": 3}, where="node 'h'").summary()[0].text
'halved 3 layers'

This module is light (pydantic only): the report reads blocks without importing passes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Line(BaseModel):
    """One sentence of a summary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["line"] = "line"
    text: str


class Table(BaseModel):
    """A small table of a summary (per-layer widths, a training curve)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["table"] = "table"
    title: str
    header: list[str]
    rows: list[list[str]]


Block = Annotated[Line | Table, Field(discriminator="kind")]


class RecordError(TypeError):
    """A pass recorded facts its record class does not declare (a bug in the pass)."""


R = TypeVar("R", bound="PassRecord")


class PassRecord(BaseModel):
    """What a pass did, for the report. The base record holds free-form ``notes``; a pass
    that records more declares a subclass as its ``record_cls``."""

    model_config = ConfigDict(extra="forbid")

    notes: list[str] = Field(default_factory=list)

    @classmethod
    def from_facts(cls: type[R], facts: dict[str, Any], *, where: str) -> R:
        """The facts a pass recorded, validated; :class:`RecordError` names the first
        fact that does not fit."""
        try:
            return cls.model_validate(facts)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise RecordError(
                f"{where}: recorded {field!r}: {first['msg']}; declare it in "
                f"{cls.__name__} (the pass's record_cls)"
            ) from None

    def facts(self) -> dict[str, Any]:
        """The recorded facts as JSON-ready data (what report.json keeps)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def summary(self) -> list[Line | Table]:
        """What the report shows of this record."""
        return [Line(text=note) for note in self.notes]


def generic_summary(facts: dict[str, Any]) -> list[Line | Table]:
    """A record no class is known for (an old report, a pass not imported): one line per
    fact, long values cut."""
    lines: list[Line | Table] = []
    for key, value in facts.items():
        text = value if isinstance(value, str) else repr(value)
        lines.append(Line(text=f"{key}: {text if len(text) <= 120 else text[:117] + '...'}"))
    return lines
