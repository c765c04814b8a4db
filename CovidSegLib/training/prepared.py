"""Render a configuration's training and validation slices once, into one file, and train from that file.

    python -m CovidSegLib.training.prepared CONFIG.json OUT.npz     # then set "prepared": "OUT.npz" in CONFIG

Rendering the anatomy representation (synthetic lesions, other acquisitions, thick slabs, the canvas) takes
minutes of CPU and needs every source on disk: SimpleITK, DICOM readers and the corpus. Training needs only the
rendered slices. A prepared file lets a run render where the data is and train where the GPU is.

The file holds the rendered sources (:func:`.sources.load_sources`), not one split of them: the split into
training and validation (the corpus' recorded groups, or fold ``fold`` of ``folds``) is made when a run reads
it, by the same code as when it renders. So one file serves a recipe's final model and every fold of its
cross-validation.

It is an ``.npz`` of plain arrays (no pickled objects: it is read with ``allow_pickle=False``). Each distinct
slice is stored once; a slice the sources repeat (``corpus_copies``) is an index, not a copy. It records the
configuration fields that decide what is rendered (:func:`data_description`); a configuration that differs in any
of them is refused by name, so that a model's card never describes data it was not trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .data import SliceSet

if TYPE_CHECKING:
    from .train import TrainConfig

#: TrainConfig fields that decide what load_sources renders, and how (the rest split or shape the training).
DATA_FIELDS = (
    "corpus", "medseg", "npz_slices", "volumes", "label_map", "healthy_volumes", "input_size", "window", "clip_hu",
    "render_hu_variants", "healthy_thick_slices_mm", "representation", "canvas_pixel_mm", "hu_window",
    "acquisitions", "synthetic_lesions", "corpus_copies", "seed", "lesion_ggo_hu", "dependent_negatives",
)
FORMAT = "covidseg-prepared-slices/1"


def data_description(config: "TrainConfig") -> dict:
    """The configuration's data fields as JSON values (tuples become lists, as in the JSON they came from)."""
    from .sources import medseg_validates

    values = asdict(config)
    described = {name: values[name] for name in DATA_FIELDS}
    described["medseg_blocks"] = config.folds if medseg_validates(config) else 0  # MedSeg's groups are its blocks
    return json.loads(json.dumps(described))


def _distinct(images: np.ndarray, lungs: np.ndarray, infection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first of each distinct slice (image and masks), and each slice's index among them."""
    keys: dict[bytes, int] = {}
    first, position = [], np.empty(len(images), dtype=np.int64)
    for index in range(len(images)):
        digest = hashlib.blake2b(images[index].tobytes(), digest_size=16)
        digest.update(np.packbits(lungs[index]).tobytes())
        digest.update(np.packbits(infection[index]).tobytes())
        key = digest.digest()
        if key not in keys:
            keys[key] = len(first)
            first.append(index)
        position[index] = keys[key]
    return np.asarray(first, dtype=np.int64), position


def _set_arrays(prefix: str, slices: SliceSet) -> dict[str, np.ndarray]:
    """``slices`` as the file's arrays under ``prefix/``: distinct images once, masks bit-packed along rows."""
    first, position = _distinct(slices.images, slices.lungs, slices.infection)
    shape = slices.lungs.shape
    arrays = {
        "images": slices.images[first],
        "lungs": np.packbits(slices.lungs[first].astype(bool), axis=-1),
        "infection": np.packbits(slices.infection[first].astype(bool), axis=-1),
        "position": position,
        "has_lungs": slices.has_lungs.astype(bool),
        "has_infection": slices.has_infection.astype(bool),
        "names": np.asarray(slices.names, dtype=str),
        "groups": np.asarray(slices.groups, dtype=str),
        "mask_shape": np.asarray(shape, dtype=np.int64),
    }
    if slices.has_density is not None:
        arrays["has_density"] = slices.has_density.astype(bool)
    return {f"{prefix}/{name}": value for name, value in arrays.items()}


def _read_set(prefix: str, stored: "np.lib.npyio.NpzFile") -> SliceSet:
    """The slice set :func:`_set_arrays` stored under ``prefix/``, every slice in its place again."""
    position = stored[f"{prefix}/position"]
    width = int(stored[f"{prefix}/mask_shape"][-1])

    def masks(name: str) -> np.ndarray:
        return np.unpackbits(stored[f"{prefix}/{name}"], axis=-1, count=width).astype(bool)[position]

    density = stored[f"{prefix}/has_density"] if f"{prefix}/has_density" in stored else None
    return SliceSet(stored[f"{prefix}/images"][position], masks("lungs"), masks("infection"),
                    stored[f"{prefix}/has_lungs"], stored[f"{prefix}/has_infection"],
                    stored[f"{prefix}/names"].tolist(), stored[f"{prefix}/groups"].tolist(), density)


def write_prepared(config: "TrainConfig", out_path: Path, log=print) -> Path:
    """Render ``config``'s sources (:func:`.sources.load_sources`) and write them to ``out_path``, atomically: an
    interrupted render leaves no file a run could mistake for a whole one."""
    from ..io.writing import atomic_output
    from .sources import load_sources

    parts, corpus_validation = load_sources(config)
    header = {"format": FORMAT, "parts": [len(part.names) for part in parts],
              "corpus_validation": corpus_validation is not None, "data": data_description(config)}
    sources = SliceSet.concatenate(parts + ([corpus_validation] if corpus_validation is not None else []))
    arrays = {"header": np.asarray(json.dumps(header)), **_set_arrays("slices", sources)}
    with atomic_output(out_path) as temporary:
        with open(temporary, "wb") as handle:  # np.savez would append .npz to a temporary name without it
            np.savez_compressed(handle, **arrays)
    log(f"{out_path}: {len(sources.names)} slices from {len(parts)} sources (stored as "
        f"{len(arrays['slices/images'])} distinct)" + (f", {len(corpus_validation.names)} of them the corpus' "
                                                        f"validation groups" if corpus_validation is not None else ""))
    return out_path


def read_prepared(config: "TrainConfig") -> tuple[SliceSet, SliceSet, str]:
    """The training set, validation set and split line of ``config`` from the sources ``config.prepared`` holds,
    after checking that the file was rendered from the same data fields as ``config``."""
    from .sources import training_sets

    return training_sets(config, read_sources(config))


def read_sources(config: "TrainConfig"):
    """The rendered sources (:data:`.sources.Sources`) in ``config.prepared``."""
    from .train import TrainConfig

    path = Path(config.prepared).expanduser()
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a prepared slice file ({error})") from error
    with stored:
        if "header" not in stored:
            raise ValueError(f"{path}: not a prepared slice file (no header)")
        header = json.loads(str(stored["header"]))
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: format {header.get('format')!r}, this version reads {FORMAT}")
        expected = data_description(config)
        # a field the file predates was rendered at its default
        recorded = {**data_description(TrainConfig(out_dir="")), **header["data"]}
        differing = sorted(name for name in expected if recorded.get(name) != expected[name])
        if differing:
            details = "; ".join(f"{name}: file {recorded.get(name)!r}, configuration {expected[name]!r}"
                                for name in differing)
            raise ValueError(f"{path} was rendered from other data settings than this configuration ({details}); "
                             f"render it again with python -m CovidSegLib.training.prepared")
        sources = _read_set("slices", stored)
    ends = np.cumsum(header["parts"]).tolist()
    parts = [sources.subset(np.arange(start, end)) for start, end in zip([0] + ends[:-1], ends)]
    corpus_validation = sources.subset(np.arange(ends[-1] if ends else 0, len(sources.names))) \
        if header["corpus_validation"] else None
    return parts, corpus_validation


def main(argv: Sequence[str] | None = None) -> int:
    from .train import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="training configuration (JSON)")
    parser.add_argument("out", help="the prepared slice file to write (.npz, outside the repository)")
    args = parser.parse_args(argv)
    config = TrainConfig.from_file(args.config)
    if config.prepared:
        raise SystemExit(f"{args.config} trains from a prepared file already ({config.prepared}): render from a "
                         f"configuration without 'prepared'")
    write_prepared(config, Path(args.out).expanduser(), log=lambda *a: print(*a, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
