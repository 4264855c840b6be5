"""The core layer every technique module builds on: head types, hook helpers, ablation and metrics.

    from mikit.core import Head, ablate_head, hook_layer, normalised_metric, logit_diff, per_token_loss

Nothing here imports a technique module (`induction`, `ioi`, `patching`, `sae`, `xattn`) or a model
source (`models`, `zoo`); a test walks the imports to keep it so.
"""

from mikit.core.hooks import ABLATIONS, Ablation, Head, ablate_head, hook_layer, module_at
from mikit.core.metrics import logit_diff, normalised_metric, per_token_loss

__all__ = [
    "ABLATIONS",
    "Ablation",
    "Head",
    "ablate_head",
    "hook_layer",
    "logit_diff",
    "module_at",
    "normalised_metric",
    "per_token_loss",
]
