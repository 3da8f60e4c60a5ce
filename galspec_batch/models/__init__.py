"""Models: network deconvolution, the xresnet18 family and simple CNNs, built by name.

    model = create_model("xresnet18-hybrid", in_bands=5, n_out=6, dropout=0.2)
    feats = model.forward_features(x)   # [N, model.num_features]
    preds = model.forward_head(feats)   # [N, n_out]; dropout active while model.head is training

The spectrum VAE (Portillo et al. 2020) is ``SpectrumVAE``; its training lives in
``galspec_batch.spectral_vae``.
"""

from . import simple, xresnet  # noqa: F401  (registers the models)
from .deconv import DeconvConv2d, fold_deconv, isqrt_newton_schulz
from .net import GalspecNet, normalize_images
from .registry import (
    ModelEntry,
    SpectrumNet,
    create_model,
    list_models,
    model_entry,
    register_model,
)
from .vae import SpectrumVAE, VAEArch, VAELoss, gaussian_kl, infovae_loss, mmd_rbf

__all__ = [
    "DeconvConv2d",
    "GalspecNet",
    "ModelEntry",
    "SpectrumNet",
    "SpectrumVAE",
    "VAEArch",
    "VAELoss",
    "create_model",
    "fold_deconv",
    "gaussian_kl",
    "infovae_loss",
    "isqrt_newton_schulz",
    "list_models",
    "mmd_rbf",
    "model_entry",
    "normalize_images",
    "register_model",
]
