"""``pipeline validate``'s pass over the input: every request built, nothing sent.

Each row goes through the same ``RequestBuilder`` a run uses (for each of ``models``), so
every row that a run would turn into a ``bad_input`` error row without sending it is
found here, counted by reason, with the first place each reason occurs. Rows that will be
sent but deserve a look (``RowCheck.warn``, e.g. a prompt too large for the limits) are
counted the same way, apart from the bad ones. ``oversize_warning`` names the rows too
large for ``limits.tokens_per_minute`` (``validate`` and ``estimate`` print it).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from pipeline.errors import BadRowError
from pipeline.limits import too_large
from pipeline.records import PromptRow
from pipeline.requests import RequestBuilder, estimate_prompt_tokens
from pipeline.runner.plan import RunPlan, models_of

_DETAIL = re.compile(r"\s*\(.*\)\s*$|, got .*$")


def reason_of(message: str) -> str:
    """A bad row's message without its row-specific detail: ``not valid JSON (unexpected
    character ...)`` and ``... got 'x'`` count as one reason each."""
    return _DETAIL.sub("", message) or message


@dataclass
class Tally:
    """Rows counted by reason, with the first row each reason was seen at."""

    counts: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        """Count one row for ``reason``."""
        self.counts[reason] += 1
        self.first.setdefault(reason, where)

    @property
    def total(self) -> int:
        """Rows counted, over every reason."""
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """``  COUNT  reason (first: where)``, most frequent first."""
        return [
            f"  {count:>8,}  {reason} (first: {self.first[reason]})"
            for reason, count in self.counts.most_common()
        ]


@dataclass
class RowCheck:
    """What building every request of a run found."""

    rows: int = 0
    requests: int = 0
    bad: Tally = field(default_factory=Tally)
    """Rows that become ``bad_input`` error rows, unsent."""
    warnings: Tally = field(default_factory=Tally)
    """Rows that will be sent but deserve a look."""

    def warn(self, reason: str, where: str) -> None:
        """Count a row that will be sent but deserves a look."""
        self.warnings.add(reason, where)


def check_rows(plan: RunPlan, builder: RequestBuilder) -> RowCheck:
    """Build the request of every row (and model) of the run; count what cannot be sent."""
    check = RowCheck()
    source = str(plan.input_path)
    models = models_of(plan.job)
    for batch in plan.source.batches(plan.limit):
        for row in batch:
            check.rows += 1
            _check_row(check, builder, row, models, row.where(source))
    return check


def _check_row(
    check: RowCheck,
    builder: RequestBuilder,
    row: PromptRow,
    models: list[str | None],
    where: str,
) -> None:
    for model in models:
        try:
            builder.build(row, model)
        except BadRowError as exc:
            check.bad.add(reason_of(str(exc)), where)
            return
        check.requests += 1


def oversize_warning(plan: RunPlan, builder: RequestBuilder) -> str | None:
    """A warning when some rows need more tokens than ``limits.tokens_per_minute`` allows
    (the run makes each an error row at once); None when all fit or there is no limit."""
    job = plan.job
    per_minute = job.limits.tokens_per_minute
    if per_minute is None:
        return None
    count, first = 0, None
    for batch in plan.source.batches(plan.limit):
        for row in batch:
            if row.problem is not None:
                continue
            try:
                tokens = estimate_prompt_tokens(builder.messages(row)) + (
                    job.request.max_tokens or 0
                )
            except BadRowError:
                continue
            reason = too_large(tokens, per_minute)
            if reason is not None:
                count += 1
                first = first or f"{row.where(str(plan.input_path))}: {reason}"
    if not count:
        return None
    return f"warning: {count:,} rows too large to send, each will be an error row; first: {first}"
