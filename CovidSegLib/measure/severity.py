"""The severity category (MosMedData CT-0..CT-4) and the sentence that says why a case got it.

The category comes from the involvement of both lungs together, with half-open bands: CT-0 no involvement,
CT-1 (0, 25) %, CT-2 [25, 50) %, CT-3 [50, 75] %, CT-4 (75, 100] %. One exception: infection no larger than the
model's measured false infection on CT without COVID-19 (its *floor*, from the model card) is CT-0, because it
cannot be told from what the model calls infection on a healthy CT. Slicer's CTChest (no COVID-19) is the case
in point: the bundled model finds 1.8 mL there, 0.03 % of the lungs, which the bands alone call CT-1.

Where no lung was found (an ``--allow-empty`` result) there is no involvement to grade: the severity is
:data:`NOT_ASSESSED`, never CT-0, which would tell a PACS or a cohort table "no disease" about a case that was
never measured.

The floor is the largest false infection the card records on CT the model never saw and whose geometry drew no
warning, taken from two kinds of figures:

- the model's own (``scores``, wherever an entry holds ``false_infection_ml``), such as Slicer's CTChest;
- its recipe's k-fold models on the CT without COVID-19 each one held out, at the card's infection floor
  (``infection_floor.cross_validation``). One model on one CT is a single sample, and a floor measured on CTChest
  alone would put CTChest at its own floor by construction; the k-fold models are the only measurement of this
  recipe on several CTs it never saw, and the card's limitations already tell the reader to expect a few to tens
  of mL on a healthy CT. Other recipes' figures in the card (siblings, studies) are not this model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

#: The model card's measurement of infection called on a CT without COVID-19 (mL), under any of its scores.
FALSE_INFECTION_KEY = "false_infection_ml"
#: Card score entries that hold other models' figures (k-fold models, siblings, an earlier stage): not this one's.
#: The recipe's own k-fold figures are read from ``infection_floor.cross_validation`` instead.
OTHER_MODELS_SCORES = ("cross_validation", "leave_one_source_out", "stage_1")
CATEGORY_BANDS = "CT-0 no involvement, CT-1 under 25%, CT-2 25% to under 50%, CT-3 50% to 75%, CT-4 over 75%"
#: The severity of a case in which no lung was found (involvement is NaN): no category at all.
NOT_ASSESSED = "not assessed"


def severity_category(involvement_percent: float) -> str:
    """MosMedData CT-0..CT-4 from the percentage of both lungs involved (bands in the module docstring);
    :data:`NOT_ASSESSED` for NaN (no lung, so no percentage of it)."""
    if math.isnan(involvement_percent):
        return NOT_ASSESSED
    if not involvement_percent > 0:
        return "CT-0"
    if involvement_percent < 25:
        return "CT-1"
    if involvement_percent < 50:
        return "CT-2"
    if involvement_percent <= 75:
        return "CT-3"
    return "CT-4"


@dataclass(frozen=True)
class FalseInfectionFloor:
    """The most infection (mL) the model called on CT without COVID-19, as its card records it.

    Infection up to it cannot be told from the model's own false infection: severity is then CT-0, and the
    report says so."""

    ml: float
    measured_on: tuple[str, ...]  # e.g. ("ctchest4: 1.8 mL", "popi_phase00 (fold 1), k-fold model ...: 15.2 mL")
    model: str

    def holds(self, infection_ml: float) -> bool:
        """Whether ``infection_ml`` is within the floor (inclusive: the floor itself was found on a healthy CT)."""
        return infection_ml <= self.ml

    def note(self, infection_ml: float) -> str:
        """What to say next to the severity: empty when the infection found is above the floor, and when none was
        found (0 mL cannot be false infection)."""
        if not infection_ml > 0 or not self.holds(infection_ml):
            return ""
        return (f"The {infection_ml:.1f} mL of infection found is within the {self.ml:.0f} mL that model "
                f"{self.model} called infection on CT without COVID-19 ({'; '.join(self.measured_on)}; model "
                "card): it may be entirely false infection.")


def _own_figures(scores: Mapping[str, Any]) -> dict[str, float]:
    """``false_infection_ml`` of every score entry on a CT the model was not trained on, with no geometry warning
    (a CT it trained on would understate it; a CT the tool warns about, such as 5 mm pixels, says nothing about
    the CTs it accepts)."""
    found: dict[str, float] = {}

    def visit(name: str, value: object) -> None:
        if isinstance(value, Mapping):
            if isinstance(value.get(FALSE_INFECTION_KEY), (int, float)) and not value.get("in_training_data") \
                    and not value.get("geometry_warnings"):
                found[name] = float(value[FALSE_INFECTION_KEY])
            for key, inner in value.items():
                if key not in OTHER_MODELS_SCORES:
                    visit(str(key), inner)

    visit("scores", scores)
    return found


def _recipe_fold_figures(scores: Mapping[str, Any], infection_floor: Mapping[str, Any]) -> dict[str, float]:
    """The recipe's k-fold models on the CT each held out, at the shipped infection floor (the column of
    ``floors_hu`` equal to ``min_hu``), leaving out the CTs whose geometry the card records warnings for."""
    folds = infection_floor.get("cross_validation") if isinstance(infection_floor, Mapping) else None
    if not isinstance(folds, Mapping):
        return {}
    floors = list(folds.get("floors_hu") or [])
    shipped = infection_floor.get("min_hu")
    if shipped not in floors:
        return {}
    column = floors.index(shipped)
    warned = {name for name, entry in (scores.get("ct_without_covid") or {}).items()
              if isinstance(entry, Mapping) and entry.get("geometry_warnings")}
    found = {}
    for ct, values in (folds.get(FALSE_INFECTION_KEY) or {}).items():
        if isinstance(values, list) and column < len(values) and isinstance(values[column], (int, float)) \
                and str(ct).split(" (")[0] not in warned:
            found[f"{ct}, k-fold model of this recipe"] = float(values[column])
    return found


def false_infection_floor(model_name: str, scores: Mapping[str, Any],
                          infection_floor: Mapping[str, Any] | None = None) -> FalseInfectionFloor | None:
    """The floor from a model card's ``scores`` and, when given, its ``infection_floor`` (the recipe's k-fold
    figures; see the module docstring). None if the card measures no false infection at all."""
    found = {**_own_figures(scores), **_recipe_fold_figures(scores, infection_floor or {})}
    found = {name: ml for name, ml in found.items() if math.isfinite(ml)}
    if not found:
        return None
    return FalseInfectionFloor(max(found.values()), tuple(f"{k}: {v:.1f} mL" for k, v in found.items()),
                               model_name)


def floor_of_card(card: Any) -> FalseInfectionFloor | None:
    """:func:`false_infection_floor` of a :class:`CovidSegLib.engine.model.ModelCard` (name, scores and
    infection floor): what every command, the Slicer module and the viewer compare the infection with."""
    return false_infection_floor(card.name, card.scores, getattr(card, "infection_floor", None))


def grade(involvement_percent: float, infection_ml: float, floor: FalseInfectionFloor | None) -> tuple[str, str]:
    """The category and one sentence saying why, e.g. ``("CT-0", "CT-0: 1.8 mL of infection found, within the
    15 mL this model finds on CT without COVID-19; ...")``; where the floor was measured is in
    :meth:`FalseInfectionFloor.note`."""
    by_involvement = severity_category(involvement_percent)
    if by_involvement == NOT_ASSESSED:
        return NOT_ASSESSED, f"{NOT_ASSESSED}: no lung found, so no involvement can be measured"
    if infection_ml <= 0:
        return "CT-0", "CT-0: no infection found"
    if floor is not None and floor.holds(infection_ml):
        return "CT-0", (f"CT-0: {infection_ml:.1f} mL of infection found, within the {floor.ml:.0f} mL this model "
                        f"finds on CT without COVID-19; by involvement alone ({involvement_percent:.2f}% of both "
                        f"lungs) it would be {by_involvement}")
    return by_involvement, (f"{by_involvement}: {involvement_percent:.1f}% of both lungs involved "
                            f"({infection_ml:.1f} mL of infection)")
