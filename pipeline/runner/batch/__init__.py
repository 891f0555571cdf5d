"""Batch mode: the job through a provider's Batch API, under the same request builder and
outcome functions as live mode, with the same output and resume.

    journal.py   <output>.batches.jsonl: what was submitted, fsynced before and after
    lines.py     custom ids, input lines and files, output/error lines read back
    rows.py      a pending row's state; the one place a line's result moves it on
    drive.py     BatchRun: re-attach, refresh, collect, submit, wait
    commands.py  ``pipeline batch status|cancel``
"""

from pipeline.runner.batch.commands import BatchLine, batch_status
from pipeline.runner.batch.drive import BatchRun, BatchSettings
from pipeline.runner.batch.journal import BatchJournal, journal_path
from pipeline.runner.batch.rows import BatchRows

__all__ = [
    "BatchJournal",
    "BatchLine",
    "BatchRows",
    "BatchRun",
    "BatchSettings",
    "batch_status",
    "journal_path",
]
