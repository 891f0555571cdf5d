"""Engines: how many processes or machines share one job, above the runner.

A shard is a normal run (lifecycle and Runner) on a share of the input, with its
results in its own place beside the output (``<output>.shards/<I>-of-<N>/``); it
resumes like any run. ``merge`` joins complete shards into the one output.

    merge.py     merge_shards: every shard complete -> the output, atomically, each row once
    ray.py       run a job's shards as Ray tasks under one global rate limit (the [ray] extra)
    leases.py    the limiter actor's buckets, and the worker's limiter that leases from them
"""

from pipeline.engines.merge import MergeResult, ShardsMissing, merge_shards
from pipeline.exits import EXIT_SHARDS_MISSING

__all__ = ["EXIT_SHARDS_MISSING", "MergeResult", "ShardsMissing", "merge_shards"]
