"""Models: network deconvolution, the xresnet18 family and simple CNNs, built by name.

    model = create_model("xresnet18-hybrid", in_bands=5, n_out=6, dropout=0.2)
    feats = model.forward_features(x)   # [N, model.num_features]
    preds = model.forward_head(feats)   # [N, n_out]; dropout active while model.head is training
"""

from . import simple, xresnet  # noqa: F401  (registers the models)
from .deconv import DeconvConv2d, fold_deconv, isqrt_newton_schulz
from .registry import SpectrumNet, create_model, list_models, model_config, register_model

__all__ = [
    "DeconvConv2d",
    "SpectrumNet",
    "create_model",
    "fold_deconv",
    "isqrt_newton_schulz",
    "list_models",
    "model_config",
    "register_model",
]
