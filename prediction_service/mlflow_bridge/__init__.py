"""The bridge from an MLflow Model Registry to the filesystem registry (issue 18).

``mlflow sync`` mirrors MLflow model versions that carry an ONNX artifact into the filesystem registry
(through ModelRegistry, so the validation gate, locks and event log apply) and turns MLflow aliases into
stage promotions. Only files are copied: nothing from MLflow is ever loaded or executed here.
The serving path never imports this package; mlflow is imported lazily inside it.
"""

from .signature import SignatureNotConvertible, convert_signature
from .sync import MlflowSync, SyncAction, SyncReport

__all__ = ["MlflowSync", "SignatureNotConvertible", "SyncAction", "SyncReport", "convert_signature"]
