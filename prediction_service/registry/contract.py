"""A version's serving contract: what a client of the model sends and gets back.

Clients of a production model are written against it: the tensors they send (names, dtypes, shapes), the
raw inputs the server turns into tensors for them (a ``bars`` step with its kind and parameters, a ``text``
step with its kind, parameters and vocabulary), what comes back (output tensors, class labels) and the
task. A promotion that changes any of it breaks them at once (a bare ONNX export drops the declared bars
step: every ``bars`` request becomes a 422), so promotion into production compares the candidate's
contract with production's (``ModelRegistry.promote``) and refuses any difference with ContractChanged
(409 ``contract_changed``, each difference listed) unless an admin passes the explicit override, which the
event log records. Not part of the contract: batching limits, artifacts and their formats, metrics.

``ServingContract`` is built from a version's signature (metadata.json) and, for a text step, the
vocabulary file stored in the version (its sha256: the same file name with other tokens is another
contract).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..signature import BarsPreprocessing, ModelSignature, TensorSpec, TextPreprocessing
from .errors import PromotionRefused
from .model_version import ModelVersion, VersionMetadata

_TEXT_PARAMETERS = ("step_version", "max_length", "truncation", "padding", "lowercase", "input_ids",
                    "attention_mask", "token_type_ids")
"""What the text step does besides its kind and vocabulary (the tokenizer file's name is not client-facing)."""


@dataclass(frozen=True)
class TensorContract:
    name: str
    dtype: str
    shape: tuple[int, ...]
    """Batch dim first; -1 dynamic."""

    @classmethod
    def of(cls, spec: TensorSpec) -> "TensorContract":
        return cls(spec.name, spec.dtype, tuple(spec.shape))

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


@dataclass(frozen=True)
class StepContract:
    """A declared pre-processing step: its kind and every parameter, as sorted (name, value) pairs."""

    kind: str
    parameters: tuple[tuple[str, Any], ...]

    def describe(self) -> str:
        return f"{self.kind}({', '.join(f'{k}={_plain(v)}' for k, v in self.parameters)})"


@dataclass(frozen=True)
class ServingContract:
    inputs: tuple[TensorContract, ...]
    outputs: tuple[TensorContract, ...]
    bars: StepContract | None
    """Raw OHLCV bars the server turns into the input (kind, window, warmup, indicator parameters, ...)."""
    text: StepContract | None
    """Raw text the server tokenizes (kind, parameters and ``vocabulary_sha256``)."""
    labels: tuple[str, ...] | None
    task: str

    @classmethod
    def of(cls, version: ModelVersion) -> "ServingContract":
        return cls.from_metadata(version.metadata, version.path)

    @classmethod
    def from_metadata(cls, metadata: VersionMetadata, version_dir: Path | None = None) -> "ServingContract":
        return cls.from_signature(metadata.signature, version_dir)

    @classmethod
    def from_signature(cls, signature: ModelSignature, version_dir: Path | None = None) -> "ServingContract":
        """``version_dir``: where the text step's vocabulary file is (its hash is part of the contract)."""
        return cls(inputs=tuple(TensorContract.of(s) for s in signature.inputs),
                   outputs=tuple(TensorContract.of(s) for s in signature.outputs),
                   bars=_bars_step(signature.bars), text=_text_step(signature.text, version_dir),
                   labels=tuple(signature.labels) if signature.labels is not None else None,
                   task=signature.task)

    @property
    def preprocessing(self) -> dict[str, StepContract]:
        """The declared steps by raw-input kind (bars, text)."""
        return {kind: step for kind, step in (("bars", self.bars), ("text", self.text)) if step is not None}

    def differences(self, other: "ServingContract") -> list["ContractChange"]:
        """Every way ``other`` differs from this contract (``a``: this one's side, ``b``: other's), in a stable
        order: inputs, outputs, pre-processing, labels, task."""
        changes: list[ContractChange] = []
        for side in ("inputs", "outputs"):
            mine = {t.name: t for t in getattr(self, side)}
            theirs = {t.name: t for t in getattr(other, side)}
            for name in sorted(mine.keys() | theirs.keys()):
                a, b = mine.get(name), theirs.get(name)
                if a != b:
                    changes.append(ContractChange(field=f"{side}.{name}", a=a.describe() if a else None,
                                                  b=b.describe() if b else None))
        for kind in ("bars", "text"):
            a, b = getattr(self, kind), getattr(other, kind)
            if a == b:
                continue
            if a is None or b is None or a.kind != b.kind:
                changes.append(ContractChange(field=f"preprocessing.{kind}", a=a.describe() if a else None,
                                              b=b.describe() if b else None))
                continue
            pa, pb = dict(a.parameters), dict(b.parameters)
            for key in sorted(pa.keys() | pb.keys()):
                if pa.get(key) != pb.get(key):
                    changes.append(ContractChange(field=f"preprocessing.{kind}.{key}", a=_maybe(pa, key),
                                                  b=_maybe(pb, key)))
        if self.labels != other.labels:
            changes.append(ContractChange(field="labels", a=_plain(self.labels) if self.labels is not None else None,
                                          b=_plain(other.labels) if other.labels is not None else None))
        if self.task != other.task:
            changes.append(ContractChange(field="task", a=self.task, b=other.task))
        return changes


class ContractChange(BaseModel):
    """One difference between two serving contracts."""

    model_config = ConfigDict(frozen=True)

    field: str
    """inputs.<name> | outputs.<name> | preprocessing.bars | preprocessing.bars.<parameter> | preprocessing.text
    | preprocessing.text.<parameter> (vocabulary_sha256 among them) | labels | task."""
    a: str | None
    """The first version's side (production's, for a promotion); None: absent there."""
    b: str | None
    """The second version's side (the candidate's); None: absent there."""

    def text(self) -> str:
        return f"{self.field}: {self.a if self.a is not None else 'none'} -> {self.b if self.b is not None else 'none'}"


class ContractChanged(PromotionRefused):
    """The candidate's serving contract differs from production's: clients of production would break.
    An explicit override (``allow_contract_change``) accepts it, and the event log records that."""

    code = "contract_changed"


def contract_changed(name: str, version: str, production: str, changes: list[ContractChange]) -> ContractChanged:
    listed = "; ".join(c.text() for c in changes)
    return ContractChanged(
        f"{name} {version} changes the serving contract of production {production} ({len(changes)} "
        f"difference{'s' if len(changes) != 1 else ''}: {listed}): clients of production would break. Promote "
        "with --allow-contract-change (API: \"allow_contract_change\": true) to accept it",
        {"model": name, "version": version, "production_version": production,
         "differences": [c.model_dump() for c in changes]})


def dropped_steps(production: ServingContract, candidate: ServingContract) -> list[tuple[str, StepContract]]:
    """Pre-processing steps production declares that the candidate does not declare at all."""
    ours = candidate.preprocessing
    return [(kind, step) for kind, step in production.preprocessing.items() if kind not in ours]


def _bars_step(bars: BarsPreprocessing | None) -> StepContract | None:
    if bars is None:
        return None
    values = bars.model_dump(mode="json")
    kind = values.pop("kind")
    return StepContract(kind, tuple(sorted((k, _frozen(v)) for k, v in values.items())))


def _text_step(text: TextPreprocessing | None, version_dir: Path | None) -> StepContract | None:
    if text is None:
        return None
    values = text.model_dump(mode="json")
    parameters = {k: _frozen(values[k]) for k in _TEXT_PARAMETERS}
    parameters["vocabulary_sha256"] = _vocabulary_hash(version_dir, text.tokenizer)
    return StepContract(text.kind, tuple(sorted(parameters.items())))


def _vocabulary_hash(version_dir: Path | None, file_name: str) -> str | None:
    """sha256 of the version's vocabulary file; None when there is no version dir or no such file."""
    if version_dir is None:
        return None
    path = Path(version_dir) / file_name
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


def _plain(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return str(value)


def _maybe(parameters: dict[str, Any], key: str) -> str | None:
    return _plain(parameters[key]) if key in parameters else None
