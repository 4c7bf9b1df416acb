"""Tree models -> ONNX: a saved LightGBM or XGBoost model, or a scikit-learn pipeline saved with skops.

How a user hands one over (``package model.txt --labels down,flat,up ...``; sources.py):

* **LightGBM**: the booster's native text model (``booster.save_model("model.txt")`` or
  ``LGBMClassifier().booster_.save_model``); recognised by its ``tree`` / ``version=`` header.
* **XGBoost**: the native JSON or UBJSON model (``booster.save_model("model.json")`` / ``.ubj``, or
  ``XGBClassifier().save_model``); ``xgboost`` itself (or ``xgboost-cpu``) must be installed to read it.
* **scikit-learn pipelines**: a ``.skops`` file (``skops.io.dump``). skops rebuilds objects from a schema
  instead of unpickling: it instantiates only types it trusts (scikit-learn's estimators, numpy, scipy)
  and refuses any other type the file names unless the caller trusts it by name (``--trust TYPE``). The
  trust boundary is that list: trust a type only when you trust the file's author, since a trusted type's
  constructor runs with the file's arguments.

Never loaded: pickles (``.pkl``, ``.pickle``, ``.joblib``, ``.dill``, ``.sav``). Unpickling runs whatever code
the file names; a model file from a colleague's share or a registry is not trusted code. Re-save the
model natively (LightGBM/XGBoost) or with skops.

Conversion: onnxmltools (LightGBM, XGBoost) and skl2onnx (pipelines, with the LightGBM/XGBoost converters
registered for pipelines that end in one), classifiers without ZipMap (a ``label`` and a ``probabilities``
tensor). The graph is then fitted to the service's signature: the classifier's probabilities become the
signature's one output (``[batch, classes]``, read with the signature's ``labels`` as label + scores; the
``label`` output is dropped: it is the arg-max), a regressor's value ``[batch, 1]``; and the signature's
input, which may have more than two dims (a bars step makes ``[batch, window, features]``), is flattened
in the graph to the ``[batch, n_features]`` rows the trees were trained on. Validation compares the ONNX
graph with the native library's own predictions on the same rows (packaging/pipeline.py).

Trees are evaluated in fp32 by ONNX Runtime's TreeEnsemble operators; there is no fp16, int8, TorchScript
or state_dict variant of a tree model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..errors import InvalidInput
from ..signature import ModelSignature, TensorSpec

TreeLibrary = Literal["lightgbm", "xgboost", "sklearn"]
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".dill", ".sav"})
TREE_SUFFIXES = frozenset({".txt", ".lgb", ".json", ".ubj", ".skops"})
"""File suffixes ``package`` reads as tree models (the library is told from the content where ambiguous)."""
CONVERTER_INPUT = "tree_input__rows"
"""The converted graph's internal input: ``[batch, n_features]``, fed by a Flatten of the signature's input."""
CONVERTER_OUTPUT = "tree_output__scores"
"""The converter's probabilities (or value), renamed inside the graph; an Identity gives the signature's name."""
TREE_OPSET = 15
"""Main-domain opset of the converted graphs: the newest onnxmltools 1.16 emits."""
ML_OPSET = 3
"""ai.onnx.ml opset of the converted graphs: TreeEnsembleClassifier/Regressor v3 (ONNX Runtime, Triton's
onnxruntime and python backends and TorchServe's onnxruntime all run it)."""

_CLASSIFIER_OBJECTIVES = {
    "lightgbm": ("binary", "multiclass", "multiclassova"),
    "xgboost": ("binary:logistic", "multi:softprob"),
}


class TreeSource(BaseModel):
    """A saved tree model, as a typed value a packaging child process can load again (no pickled object)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    library: TreeLibrary
    trusted_types: tuple[str, ...] = ()
    """sklearn (skops) only: types the caller trusts beyond skops's defaults (fully qualified names)."""


@dataclass
class TreeModel:
    source: TreeSource
    estimator: Any
    """lightgbm.Booster, xgboost.Booster or a fitted scikit-learn estimator / pipeline."""
    task: Literal["classification", "regression"]
    n_features: int
    n_classes: int | None = None
    classes: list[str] | None = None
    """Class names the model itself knows (scikit-learn's ``classes_``), else None."""

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """The native library's prediction for ``[rows, n_features]``: class probabilities ``[rows, classes]``
        or values ``[rows, 1]``, float32 (the reference every ONNX variant is validated against)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.source.library == "lightgbm":
            out = np.asarray(self.estimator.predict(rows))
        elif self.source.library == "xgboost":
            import xgboost

            out = np.asarray(self.estimator.predict(xgboost.DMatrix(rows)))
        elif self.task == "classification":
            out = np.asarray(self.estimator.predict_proba(rows))
        else:
            out = np.asarray(self.estimator.predict(rows))
        if self.task == "classification" and out.ndim == 1:  # binary boosters give P(class 1)
            out = np.stack([1.0 - out, out], axis=1)
        return out.reshape(len(rows), -1).astype(np.float32)

    def predict_signature(self, signature: ModelSignature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Native predictions for signature-shaped inputs (a ``[batch, window, features]`` input is flattened
        to the rows the model was trained on, as the ONNX graph does)."""
        spec = signature.inputs[0]
        array = inputs[spec.name]
        return {signature.outputs[0].name: self.predict(array.reshape(len(array), -1))}


def detect_library(path: Path) -> TreeLibrary | None:
    """The library that wrote ``path``, from its suffix and header; None when it is no tree model file.
    Pickles are refused with the reason (never loaded)."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise InvalidInput(f"{path.name}: pickled models are not loaded (unpickling runs code named by the file); "
                           "save a LightGBM/XGBoost model natively (save_model) or a scikit-learn pipeline with "
                           "skops (skops.io.dump)")
    if suffix == ".skops":
        return "sklearn"
    if suffix == ".ubj":
        return "xgboost"
    if suffix not in TREE_SUFFIXES:
        return None
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if head.startswith(b"tree\n") or head.startswith(b"tree\r\n") or b"\nversion=v" in head[:64]:
        return "lightgbm"
    if head.startswith(b"{") and b'"learner"' in head:
        return "xgboost"
    return None


def load_tree_model(source: TreeSource) -> TreeModel:
    path = Path(source.path)
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist")
    if source.library == "lightgbm":
        return _load_lightgbm(source)
    if source.library == "xgboost":
        return _load_xgboost(source)
    return _load_skops(source)


def _load_lightgbm(source: TreeSource) -> TreeModel:
    try:
        import lightgbm
    except ImportError as exc:
        raise InvalidInput("a LightGBM model needs the lightgbm package (pip install lightgbm)") from exc
    try:
        booster = lightgbm.Booster(model_file=str(source.path))
    except lightgbm.basic.LightGBMError as exc:
        raise InvalidInput(f"{source.path.name} is not a LightGBM model file: {exc}") from exc
    objective = ""
    with open(source.path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("objective="):
                objective = line.split("=", 1)[1].split()[0] if line.split("=", 1)[1].split() else ""
                break
            if line.startswith("Tree="):
                break
    if objective in _CLASSIFIER_OBJECTIVES["lightgbm"]:
        classes = 2 if objective == "binary" else booster.num_model_per_iteration()
        return TreeModel(source, booster, "classification", booster.num_feature(), classes)
    return TreeModel(source, booster, "regression", booster.num_feature())


def _load_xgboost(source: TreeSource) -> TreeModel:
    try:
        import xgboost
    except ImportError as exc:
        raise InvalidInput("an XGBoost model needs the xgboost package (pip install xgboost, or xgboost-cpu)") \
            from exc
    booster = xgboost.Booster()
    try:
        booster.load_model(str(source.path))
    except xgboost.core.XGBoostError as exc:
        raise InvalidInput(f"{source.path.name} is not an XGBoost model file: {exc}") from exc
    learner = json.loads(booster.save_config())["learner"]
    objective = learner["objective"]["name"]
    n_features = booster.num_features()
    if objective in _CLASSIFIER_OBJECTIVES["xgboost"]:
        classes = 2 if objective.startswith("binary") else int(learner["learner_model_param"]["num_class"])
        return TreeModel(source, booster, "classification", n_features, classes)
    if objective.startswith("binary:") or objective.startswith("multi:") or objective.startswith("rank:"):
        raise InvalidInput(f"{source.path.name}: XGBoost objective {objective!r} has no probabilities to serve; "
                           "train with binary:logistic or multi:softprob")
    return TreeModel(source, booster, "regression", n_features)


def _load_skops(source: TreeSource) -> TreeModel:
    try:
        import skops.io as sio
        from sklearn.base import is_classifier
    except ImportError as exc:
        raise InvalidInput("a scikit-learn pipeline needs scikit-learn and skops (pip install scikit-learn skops)") \
            from exc
    try:
        untrusted = sio.get_untrusted_types(file=str(source.path))
    except Exception as exc:  # noqa: BLE001 - skops raises several types for a file it cannot read
        raise InvalidInput(f"{source.path.name} is not a skops file: {exc}") from exc
    refused = sorted(set(untrusted) - set(source.trusted_types))
    if refused:
        raise InvalidInput(
            f"{source.path.name} names types skops does not trust by default: {', '.join(refused)}; trust them "
            "by name (--trust) only if you trust the file's author", {"untrusted_types": refused})
    estimator = sio.load(str(source.path), trusted=list(untrusted))
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise InvalidInput(f"{source.path.name}: the estimator is not fitted (no n_features_in_)")
    if is_classifier(estimator):
        if not hasattr(estimator, "predict_proba"):
            raise InvalidInput(f"{source.path.name}: the classifier has no predict_proba to serve as scores")
        classes = [str(c) for c in estimator.classes_]
        return TreeModel(source, estimator, "classification", int(n_features), len(classes), classes)
    return TreeModel(source, estimator, "regression", int(n_features))


def default_signature(model: TreeModel, labels: list[str] | None = None, input_name: str = "features",
                      max_batch_size: int = 256) -> ModelSignature:
    """``features [batch, n_features]`` float32 -> ``probabilities [batch, classes]`` with labels (the given
    ones, the model's own classes, else ``class_0``...), or ``prediction [batch, 1]``."""
    inputs = [TensorSpec(name=input_name, dtype="float32", shape=(-1, model.n_features))]
    if model.task == "regression":
        if labels:
            raise InvalidInput("labels apply to classifiers; this model is a regressor")
        return ModelSignature(inputs=inputs, outputs=[TensorSpec(name="prediction", dtype="float32", shape=(-1, 1))],
                              max_batch_size=max_batch_size)
    assert model.n_classes is not None
    labels = labels or model.classes or [f"class_{i}" for i in range(model.n_classes)]
    return ModelSignature(inputs=inputs,
                          outputs=[TensorSpec(name="probabilities", dtype="float32", shape=(-1, model.n_classes))],
                          task="classification", labels=list(labels), max_batch_size=max_batch_size)


def check_signature(model: TreeModel, signature: ModelSignature) -> None:
    """InvalidInput unless ``signature`` is one float32 input whose row holds the model's features (any fixed
    row shape, flattened in the graph) and one float32 output of the model's kind."""
    where = f"the tree model ({model.source.path.name})"
    if len(signature.inputs) != 1 or len(signature.outputs) != 1:
        raise InvalidInput(f"{where} takes one input and gives one output; the signature has "
                           f"{len(signature.inputs)} inputs and {len(signature.outputs)} outputs")
    spec, out = signature.inputs[0], signature.outputs[0]
    row = spec.row_shape
    if spec.dtype != "float32" or spec.shape[0] != -1 or not row or any(d == -1 for d in row):
        raise InvalidInput(f"{where}: input {spec.name!r} must be float32 with a dynamic batch and fixed row "
                           f"dims, got {spec.dtype} {list(spec.shape)}")
    if int(np.prod(row)) != model.n_features:
        raise InvalidInput(f"{where} reads {model.n_features} features per row; input {spec.name!r} rows hold "
                           f"{int(np.prod(row))} ({list(row)})")
    width = model.n_classes if model.task == "classification" else 1
    if out.dtype != "float32" or out.shape != (-1, width):
        raise InvalidInput(f"{where}: output {out.name!r} must be float32 [-1, {width}], got {out.dtype} "
                           f"{list(out.shape)}")
    if signature.task != model.task:
        raise InvalidInput(f"{where} is a {model.task} model; the signature says {signature.task}")
    if model.task == "classification" and signature.labels and len(signature.labels) != width:
        raise InvalidInput(f"{where} has {width} classes; the signature names {len(signature.labels)} labels")


def convert_to_onnx(model: TreeModel, signature: ModelSignature, target: Path) -> Path:
    """The converter's graph fitted to ``signature`` (one input, flattened; one output), saved at ``target``."""
    import onnx

    check_signature(model, signature)
    converted = _convert(model)
    onnx.save(_fit_to_signature(converted, model, signature), str(target))
    return target


def _convert(model: TreeModel):
    from onnxmltools.convert.common.data_types import FloatTensorType

    initial_types = [(CONVERTER_INPUT, FloatTensorType([None, model.n_features]))]
    library = model.source.library
    if library == "lightgbm":
        from onnxmltools import convert_lightgbm

        return convert_lightgbm(model.estimator, initial_types=initial_types, zipmap=False, target_opset=TREE_OPSET)
    if library == "xgboost":
        from onnxmltools import convert_xgboost

        return convert_xgboost(model.estimator, initial_types=initial_types, target_opset=TREE_OPSET)
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType as SklFloatTensorType

    initial_types = [(CONVERTER_INPUT, SklFloatTensorType([None, model.n_features]))]
    _register_sklearn_tree_converters()
    final = model.estimator.steps[-1][1] if hasattr(model.estimator, "steps") else model.estimator
    options = {id(final): {"zipmap": False}} if model.task == "classification" else None
    return convert_sklearn(model.estimator, initial_types=initial_types, options=options,
                           target_opset={"": TREE_OPSET, "ai.onnx.ml": ML_OPSET})


_REGISTERED = False


def _register_sklearn_tree_converters() -> None:
    """Let skl2onnx convert pipelines that end in a LightGBM / XGBoost scikit-learn estimator (onnxmltools'
    converters), for whichever of the two libraries is installed."""
    global _REGISTERED
    if _REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                  calculate_linear_regressor_output_shapes)

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
                                    convert_lightgbm, options=classifier_options)
        update_registered_converter(LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
                                    convert_lightgbm, options={"split": None})
    except ImportError:
        pass
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes,
                                    convert_xgboost, options=classifier_options)
        update_registered_converter(XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes,
                                    convert_xgboost)
    except ImportError:
        pass
    _REGISTERED = True


def _fit_to_signature(converted, model: TreeModel, signature: ModelSignature):
    """Signature input -> Flatten -> the converter's rows; its probabilities (or value) -> the signature output."""
    from onnx import TensorProto, helper

    graph = converted.graph
    initializers = {i.name for i in graph.initializer}
    (converter_input,) = [i for i in graph.input if i.name not in initializers]
    if converter_input.name != CONVERTER_INPUT:
        raise InvalidInput(f"the converter named its input {converter_input.name!r}")
    floats = [o for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT]
    if model.task == "classification":
        chosen = next((o for o in floats if "prob" in o.name), floats[-1] if floats else None)
    else:
        chosen = floats[0] if floats else None
    if chosen is None:
        raise InvalidInput(f"the converted graph has no float output ({[o.name for o in graph.output]})")
    in_spec, out_spec = signature.inputs[0], signature.outputs[0]
    scores = _rename(graph, chosen.name, CONVERTER_OUTPUT)  # the signature may reuse the converter's names
    taken = {name for node in graph.node for name in (*node.input, *node.output)} | initializers
    if in_spec.name in taken or out_spec.name in taken:
        raise InvalidInput(f"the converted graph already uses a tensor named {in_spec.name!r} or {out_spec.name!r}; "
                           "name the signature's tensors differently")

    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(in_spec.name, TensorProto.FLOAT, ["batch", *in_spec.row_shape]))
    graph.node.insert(0, helper.make_node("Flatten", [in_spec.name], [CONVERTER_INPUT], axis=1,
                                          name="signature_input_rows"))
    graph.node.append(helper.make_node("Identity", [scores], [out_spec.name], name="signature_output"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(out_spec.name, TensorProto.FLOAT,
                                                      ["batch", *out_spec.row_shape]))
    if not any(o.domain in ("", "ai.onnx") for o in converted.opset_import):  # an ML-only graph (XGBoost)
        converted.opset_import.append(helper.make_opsetid("", TREE_OPSET))
    converted.doc_string = (f"{model.source.library} {model.task} model ({model.n_features} features) converted by "
                            f"{converted.producer_name} {converted.producer_version}")
    return converted


def _rename(graph, old: str, new: str) -> str:
    for node in graph.node:
        for names in (node.input, node.output):
            for index, name in enumerate(names):
                if name == old:
                    names[index] = new
    return new
