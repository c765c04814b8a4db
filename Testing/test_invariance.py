"""Metamorphic tests of the bundled model through ``covidseg segment``'s path (CovidSegLib.measure.invariance),
on real CT that no model trains on: the answer must depend on the patient, not on the acquisition.

Targets (issue "See the patient, not the scanner"): on every padded, cropped, resampled, non-square or reordered
variant of Slicer's CTChest, lung volume within 3 % of the unchanged CT's and at most 10 mL of false infection; the
parenchyma of lungmask's slices raised to ground-glass density (+300 HU) at least 80 % infection and 95 % still
lung; a synthetic diffuse lesion on CTChest found.

The clahe model bundled before the anatomy representation fails them (CTChest padded: 84 mL of false infection;
lungmask's slices +300 HU: 0.0 % infection), which these tests record as expected failures until the bundled card
is an anatomy model; from then on they must pass (strict). Only a failed assertion counts as the expected failure:
an error in the probes fails the suite."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from CovidSegLib.checks.intensity import prepare_ct
from CovidSegLib.engine.model import BUNDLED_CARD, load_model, read_card
from CovidSegLib.io.reading import read_volume
from CovidSegLib.measure.invariance import acquisition_probes, density_probes, lesion_probe

LUNG_TOLERANCE = 0.03
FALSE_INFECTION_ML = 10.0
BEFORE_ANATOMY = pytest.mark.xfail(
    read_card(BUNDLED_CARD).preprocessing.mode != "anatomy", strict=True, raises=AssertionError,
    reason="the bundled model predates the anatomy representation (issue: See the patient, not the scanner)")


@pytest.fixture(scope="module")
def model():
    return load_model(BUNDLED_CARD)


@BEFORE_ANATOMY
def test_another_acquisition_of_ctchest_gives_the_same_volumes(volumes, model) -> None:
    ct = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    results = acquisition_probes(ct, model)
    report = "\n".join(f"{r.variant}: lung {r.volumes.lung_ml:.0f} mL ({r.lung_ratio:.3f}), infection "
                       f"{r.volumes.infection_ml:.1f} mL" for r in results)
    assert len(results) == 8, report
    for result in results:
        assert abs(result.lung_ratio - 1) <= LUNG_TOLERANCE, report
        assert result.volumes.infection_ml <= FALSE_INFECTION_ML, report


@BEFORE_ANATOMY
def test_a_denser_lung_is_called_infection_and_stays_lung(volumes, model) -> None:
    ct = prepare_ct(read_volume(volumes / "lungmask_dicom"))
    ground_glass, consolidation = density_probes(ct, model, (300.0, 600.0))
    report = f"{ground_glass}\n{consolidation}"
    assert ground_glass.raised_ml > 20, report
    assert ground_glass.called_infection >= 0.8 and ground_glass.inside_lung >= 0.95, report
    assert consolidation.inside_lung >= 0.95, report


@BEFORE_ANATOMY
def test_a_synthetic_diffuse_lesion_on_a_ct_kept_out_of_training_is_found(volumes, model) -> None:
    from CovidSegLib.io.orientation import to_canonical
    from CovidSegLib.training.lesions import draw_lesion

    ct = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    canonical, plan = to_canonical(ct)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(volumes / "ctchest4.seg.nrrd")))
    lungs = plan.to_canonical(np.isin(labels, (5, 6)))
    spacing = canonical.geometry.spacing
    hu, lesion, recipe = draw_lesion(canonical.array.astype(np.float32), lungs,
                                     (float(spacing[2]), float(spacing[1]), float(spacing[0])),
                                     np.random.default_rng(3), extent="diffuse", consolidation=False)
    with_lesion = ct.with_array(np.round(plan.from_canonical(hu)).astype(ct.array.dtype))
    result = lesion_probe(with_lesion, plan.from_canonical(lesion), model)
    report = f"{recipe}\n{result}"
    assert result.lesion_ml > 1000, report
    assert result.sensitivity >= 0.8 and result.dice >= 0.7 and result.inside_lung >= 0.95, report
