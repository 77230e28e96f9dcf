"""The run context: one immutable, typed description of a run, built once
from the command line (``driver.parse_args``) and handed explicitly to the
jobs and the runner's functions.

Nothing changes a context once it is made (it is a frozen dataclass: setting
an attribute raises ``dataclasses.FrozenInstanceError``). Where a function
needs another view of the run (the job the row driver runs, a part's share
of the seeds, the nets ``--nets`` asks for, the float64 that ``--book-seed``
implies) it makes a new context with `RunContext.replace`, as
``dataclasses.replace`` does, and hands that on.

The fields keep the names the chapters read (``args.seed``, ``args.quick``,
``args.out``, ...). A chapter's own options (``--epochs``, ``--train-size``,
``--nets``, ``--book-seed``) are kept read-only in ``options`` and read as
attributes too (``args.epochs``), so chapter code reads them as it reads the
common ones.

What does change while a command runs (the rows recorded, the checkpoint
being written, the owner locks held, the figures announced) is not the run's
description but the command's state: the ``session`` (``session.Session``),
one per command, shared by every context of that command.
"""
import argparse
import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.session import Session

DEFAULT_SEED = 12345678   # the book's fig/ seed


@dataclass(frozen=True)
class RunContext:
    """One command's run of a chapter (or of ``nndl-jax reproduce``), as parsed.

    What the user asked: ``chapter``, ``prog`` (the command as typed, for
    messages and the resume command), ``argv`` (its arguments), ``row_ids``
    (the chapter's rows), ``asked`` (``--only`` as given, table ids included)
    and ``only`` (their rows, or reproduce's chapters; None: every one),
    ``seeds`` (runs per row; reproduce: None for each chapter's own), ``seed``,
    ``out``, ``data_dir``, ``quick``, ``x64``, ``resume``, ``restart``;
    where it runs: ``devices``, ``share_device``, the processes (``coordinator``,
    ``num_processes``, ``process_id``, ``coordinator_timeout``, ``cluster``,
    ``debug``), ``part``/``plan`` (``--part I/N``, ``--plan N``) and
    ``book_plan`` (reproduce's plan of the whole book); the chapter's own
    ``options``.

    Derived before anything trains: ``share`` (the units this part runs),
    ``part_record``, ``code`` (the code version), ``started`` and ``run_id``
    (set when the run starts; None in a planner's context).

    The row driver's view of one job: ``job``, ``checkpoint_id`` (the name
    of its checkpoint folder) and ``unit_seeds`` (the seeds it trains).
    """

    chapter: str = ""
    prog: str = ""
    argv: tuple = ()
    row_ids: tuple = ()
    asked: tuple | None = None
    only: tuple | None = None
    seeds: int | None = 3
    seed: int = DEFAULT_SEED
    out: Path = Path("results")
    data_dir: Path | None = None
    quick: bool = False
    x64: bool = False
    resume: bool = False
    restart: bool = False
    devices: int | None = None
    share_device: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    coordinator_timeout: int | None = None
    cluster: bool = False
    debug: bool = False
    part: tuple | None = None
    plan: int | None = None
    book_plan: Any = None
    options: Mapping = field(default_factory=lambda: types.MappingProxyType({}))
    share: frozenset | None = None
    part_record: dict | None = None
    code: dict | None = None
    started: float | None = None
    run_id: str | None = None
    job: Any = None
    checkpoint_id: str | None = None
    unit_seeds: tuple | None = None
    session: Session = field(default_factory=Session, compare=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.options, types.MappingProxyType):
            object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))

    def __getattr__(self, name):
        """A chapter's own option (``args.epochs``), read-only; AttributeError for any other name."""
        if name.startswith("__") or name == "options":
            raise AttributeError(name)
        try:
            return self.options[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field or option {name!r}") from None

    def replace(self, **changes):
        """A new context with ``changes``: fields as ``dataclasses.replace`` takes
        them, a chapter's own options (``nets=...``) into ``options``."""
        names = {f.name for f in dataclasses.fields(self)}
        options = {k: v for k, v in changes.items() if k not in names}
        fields_changed = {k: v for k, v in changes.items() if k in names}
        if options:
            fields_changed["options"] = {**self.options, **{k: frozen(v) for k, v in options.items()}}
        return dataclasses.replace(self, **fields_changed)

    def settings(self):
        """Every field that describes what was asked, and the chapter's options,
        as {name: value}: the command line as parsed, for comparing processes."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in NOT_ASKED}
        return {**given, **self.options}


NOT_ASKED = {"prog", "argv", "options", "started", "run_id", "job", "checkpoint_id", "unit_seeds", "session"}
"""The fields that are not the command line (the same command in each process gives different ones)."""


def frozen(value):
    """``value`` as an immutable value: lists (``nargs="+"``) as tuples, sets as frozensets."""
    if isinstance(value, list):
        return tuple(frozen(v) for v in value)
    if isinstance(value, set):
        return frozenset(value)
    return value


def from_namespace(parsed: argparse.Namespace, **derived):
    """The context of a parsed command line: each value of ``parsed`` (and of
    ``derived``, which win) to its field, the chapter's own options into ``options``."""
    names = {f.name for f in dataclasses.fields(RunContext)}
    values = {k: frozen(v) for k, v in {**vars(parsed), **derived}.items()}
    return RunContext(**{k: v for k, v in values.items() if k in names},
                      options={k: v for k, v in values.items() if k not in names})
