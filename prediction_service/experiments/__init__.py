"""A/B experiments: sticky traffic split, outcome tracking, statistics and promotion decisions."""

from .models import Analysis, Arm, Assignment, Decision, Experiment, ExperimentMode, ExperimentSpec, ExperimentStatus
from .service import ExperimentService
from .store import ExperimentStore

__all__ = ["Analysis", "Arm", "Assignment", "Decision", "Experiment", "ExperimentMode", "ExperimentService",
           "ExperimentSpec", "ExperimentStatus", "ExperimentStore"]
