"""Model merging: named methods over shared building blocks. Never trains."""

from pipelines.merging.registry import MERGE_METHODS, MergeMethod, MergeResult, merge, run_merge
from pipelines.merging.state import StateDict, weighted_average

__all__ = ["MERGE_METHODS", "MergeMethod", "MergeResult", "StateDict", "merge", "run_merge", "weighted_average"]
