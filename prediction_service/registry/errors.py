"""Registry-specific refinements of the core domain errors (same HTTP mapping as their parents)."""

from __future__ import annotations

from ..errors import Conflict, ServiceUnavailable


class PromotionRefused(Conflict):
    """A version may not enter production: its validation did not pass (``force`` overrides)."""

    code = "promotion_refused"


class InvalidTransition(Conflict):
    """The lifecycle table does not allow this status change."""

    code = "invalid_transition"


class StageInUse(Conflict):
    """A stage link points at the version, so it cannot be deleted."""

    code = "stage_in_use"


class RegistryBusy(ServiceUnavailable):
    """Another process held the model's lock for longer than the wait allows."""

    code = "registry_busy"


class NameInUse(Conflict):
    """Models and ensembles share one namespace: a name holding versions of one cannot take the other's."""

    code = "name_in_use"
