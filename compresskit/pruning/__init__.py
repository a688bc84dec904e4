"""Helpers of the pruning passes: which modules (scope), how to rank (criteria), how much
(sizing: ratios, MACs/params/latency targets, step schedules), and the structures
torch-pruning does not know: Hugging Face attention (attention) and whole blocks (depth).

Statistics (gradients, head and block sensitivities) are collected once per step and then
applied; the passes live in ``compresskit/passes/prune_*.py``.
"""
