"""A budgeted search over compression policies (``compresskit search``): pruning ratios
per stage, depth and precision, scored by a short distillation and measured latency; the
Pareto front trained for longer and measured against the baseline.

Example::

    result = compresskit.search("model.pt", "digits", time_limit=600,
                                max_accuracy_drop=0.01, min_speedup=2.0)
"""

from compresskit.policy_search.goal import Goal, SearchOptions
from compresskit.policy_search.runner import SearchResult, search

__all__ = ["Goal", "SearchOptions", "SearchResult", "search"]
