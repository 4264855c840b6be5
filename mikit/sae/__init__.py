"""Sparse autoencoders: architectures, metrics and SAELens-compatible files.

    from mikit import sae
    model = sae.TopKSAE(d_in=64, d_sae=256, k=8)
    out = model.forward_with_loss(activations)      # out.loss, out.latents, out.x_hat, ...
    sae.metrics.explained_variance(activations, out.x_hat)
    sae.save(model, "my_sae"); sae.load("my_sae")
"""

from mikit.sae import metrics
from mikit.sae.architectures import SAE, BatchTopKSAE, JumpReLUSAE, ReLUSAE, SAEOutput, TopKSAE
from mikit.sae.init import geometric_median
from mikit.sae.io import load, load_released, save

__all__ = [
    "SAE",
    "BatchTopKSAE",
    "JumpReLUSAE",
    "ReLUSAE",
    "SAEOutput",
    "TopKSAE",
    "geometric_median",
    "load",
    "load_released",
    "metrics",
    "save",
]
