"""Probing frozen encoders layer by layer: Convex Gated Probing (CGP) and the probes it is compared with.

- `encoder`: `LayerFeatureEncoder`, any encoder returning ``hidden_states`` seen as per-layer token features.
- `cache`: the encoder runs once per clip into a float16 memory-mapped cache sized up front.
- `heads`: linear, SUPERB weighted-sum, attentive, prototype and convex gated probe heads.
- `train`: a head trained for many epochs on a cache (the linear one also fitted to its optimum by L-BFGS),
  scored with the library's mAP / accuracy.
- `probed_encoder`: encoder + trained head end to end, without a cache.
- `report`: the learned layer weights as JSON and PNG.

``recipes/probe.py`` runs the whole protocol on any encoder path or Hub id.
"""

from .cache import (
    CacheBudgetError,
    CachePlan,
    FeatureCache,
    build_feature_cache,
    cached_features,
    dataset_fingerprint,
    encoder_fingerprint,
    plan_cache,
)
from .encoder import LayerFeatureEncoder, group_tokens, map_tokens
from .heads import (
    PROBES,
    AttentiveProbe,
    ConvexGatedProbe,
    LinearProbe,
    PooledLinearHead,
    ProbeHead,
    PrototypeHead,
    PrototypeProbe,
    WeightedSumProbe,
    build_probe,
    load_probe_head,
    save_probe_head,
)
from .probed_encoder import ProbedEncoder
from .report import (
    LAYER_WEIGHTS_JSON,
    LAYER_WEIGHTS_PNG,
    layer_weights_report,
    plot_layer_weights,
    remove_layer_weights,
    write_layer_weights,
)
from .train import (
    OPTIMIZERS,
    evaluate_probe,
    fit_linear_head,
    position_means,
    position_share,
    predict,
    probe_loss,
    train_probe,
)

__all__ = [
    "LAYER_WEIGHTS_JSON",
    "LAYER_WEIGHTS_PNG",
    "OPTIMIZERS",
    "PROBES",
    "AttentiveProbe",
    "CacheBudgetError",
    "CachePlan",
    "ConvexGatedProbe",
    "FeatureCache",
    "LayerFeatureEncoder",
    "LinearProbe",
    "PooledLinearHead",
    "ProbeHead",
    "ProbedEncoder",
    "PrototypeHead",
    "PrototypeProbe",
    "WeightedSumProbe",
    "build_feature_cache",
    "build_probe",
    "cached_features",
    "dataset_fingerprint",
    "encoder_fingerprint",
    "evaluate_probe",
    "fit_linear_head",
    "group_tokens",
    "layer_weights_report",
    "load_probe_head",
    "map_tokens",
    "plot_layer_weights",
    "position_means",
    "position_share",
    "predict",
    "plan_cache",
    "probe_loss",
    "remove_layer_weights",
    "save_probe_head",
    "train_probe",
    "write_layer_weights",
]
