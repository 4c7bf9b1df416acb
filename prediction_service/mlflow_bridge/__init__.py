"""The bridge from an MLflow Model Registry to the filesystem registry.

``mlflow sync`` (and a following server, follow.py) mirrors MLflow model versions that carry an ONNX or
TorchScript artifact into the filesystem registry (through ModelRegistry, so the validation gate, locks and
event log apply) and turns MLflow aliases into stage promotions; ``package --mlflow`` (publish.py) goes the
other way. Only files are copied: nothing from MLflow is unpickled or imported. The request path never
imports this package; Service.start imports follow.py only when following, and mlflow is imported lazily.
"""

from .signature import SignatureNotConvertible, convert_signature
from .sync import MlflowSync, SyncAction, SyncReport

__all__ = ["MlflowSync", "SignatureNotConvertible", "SyncAction", "SyncReport", "convert_signature"]
