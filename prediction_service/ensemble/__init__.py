"""Registered ensembles: member models named in the registry, combined by a shipped combiner."""

from .combiners import Combiner, WeightedPriceSentiment
from .errors import MemberUnavailable
from .runner import EnsembleProvenance, EnsembleRunner
from .spec import ENSEMBLE_FILE, Ensemble, EnsembleMember, EnsembleMetadata
from .store import EnsembleCatalog, EnsembleRegistry

__all__ = ["ENSEMBLE_FILE", "Combiner", "Ensemble", "EnsembleCatalog", "EnsembleMember", "EnsembleMetadata",
           "EnsembleProvenance", "EnsembleRegistry", "EnsembleRunner", "MemberUnavailable", "WeightedPriceSentiment"]
