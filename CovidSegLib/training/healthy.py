"""Lay out the CTs without COVID-19 that the bundled model trains on, from the files brought from their public
repositories, into the folders ``healthy_volumes`` reads (outside the repository: data is never committed).

    python -m CovidSegLib.training.healthy SOURCES OUT [--shared ../shared/data]

``SOURCES`` holds the files as fetched (the paths below); ``OUT`` gets ``totalseg/``, ``copdgene/`` and
``popi/`` (links, plus one derived label file). Which CT is what, where it comes from and its licence:

- ``totalseg``: the TotalSegmentator example (``../shared/data/volumes``), lungs from its lobe labels.
- ``copdgene``: COPDGene subject 10002K, inspiratory CT downsampled 8x (64x64x79, about 4 mm), from
  acil-bwh/ChestImagingPlatform ``Testing/Data/Input/ct-64.nrrd`` with ``wholeLung-64.nrrd`` (commit a87fba1b,
  2014; Chest Imaging Platform licence, research use, attribution kept). A COPD patient: emphysema is not
  infection, which makes it a hard negative. Its whole-lung mask is split into left and right here by
  :func:`CovidSegLib.engine.lateral.split_left_right`, the engine's own rule.
- ``popi``: one phase of a 2007 radiotherapy-planning 4D-CT (512x512x141, 0.98x0.98x2 mm; thoracic inlet to
  the liver dome), the DICOM series ``examples/data/00/`` of InsightSoftwareConsortium/ITKElastix at commit
  787db6d1 (removed there since); most likely the POPI-model (Leon Berard / CREATIS, research use with
  citation). A lung-cancer patient, normal lung otherwise. No lung masks: it trains the infection output only.

Held out, never trained on: Slicer's CTChest (``ctchest4.nrrd``), CIP's ``Testing/Data/Input/TestInput.nrrd``
(shoulders to upper abdomen, 64x64x50) and lungmask's two DICOM slices.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

COPDGENE_CT = "ct-64.nrrd"
COPDGENE_LUNGS = "wholeLung-64.nrrd"
POPI_SERIES = "popi_dicom"


def split_lung_mask(mask_path: Path, out_path: Path) -> None:
    """A whole-lung mask (non-zero = lung) as CovidSeg labels 1 left, 2 right, on the same grid."""
    import SimpleITK as sitk

    from ..engine.lateral import split_left_right
    from ..io.orientation import to_canonical
    from ..io.reading import read_volume
    from ..io.writing import atomic_output

    canonical, plan = to_canonical(read_volume(mask_path))
    labels = plan.from_canonical(split_left_right(canonical.array > 0, canonical.geometry)).astype(np.uint8)
    reference = sitk.ReadImage(str(mask_path))
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    with atomic_output(out_path) as temporary:  # makes the folder; never a partial label file
        sitk.WriteImage(image, str(temporary), True)


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve())


def lay_out(sources: Path, out: Path, shared: Path) -> list[Path]:
    """Build ``out/totalseg``, ``out/copdgene`` and ``out/popi``; returns the folders made."""
    volumes = shared / "volumes"
    _link(volumes / "totalseg_example_ct_sm.nii.gz", out / "totalseg" / "images" / "totalseg_example.nii.gz")
    _link(volumes / "totalseg_example_ct_sm_seg.nii.gz", out / "totalseg" / "labels" / "totalseg_example.nii.gz")
    _link(sources / COPDGENE_CT, out / "copdgene" / "images" / "copdgene_10002K.nrrd")
    split_lung_mask(sources / COPDGENE_LUNGS, out / "copdgene" / "labels" / "copdgene_10002K.nrrd")
    _link(sources / POPI_SERIES, out / "popi" / "popi_phase00")
    return [out / "totalseg", out / "copdgene", out / "popi"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", help=f"folder with {COPDGENE_CT}, {COPDGENE_LUNGS} and {POPI_SERIES}/ "
                                        "(the POPI DICOM series)")
    parser.add_argument("out", help="folder to lay the training volumes out in (outside the repository)")
    parser.add_argument("--shared", default="../shared/data", help="the shared data folder")
    args = parser.parse_args()
    for folder in lay_out(Path(args.sources).expanduser(), Path(args.out).expanduser(), Path(args.shared)):
        print(folder)


if __name__ == "__main__":
    main()
