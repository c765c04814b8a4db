"""Training slices on the anatomy canvas (card ``preprocessing.mode: anatomy``), made by the engine's own code.

HU slices are placed by their spacing (or, without one, by their body's width, as ``predict-slices`` places them)
and rendered by :func:`CovidSegLib.engine.anatomy.render_hu`; the corpus' 8-bit CLAHE images, which have no HU and
no spacing, are placed by their body's width (:func:`CovidSegLib.engine.canvas.estimated_pixel_mm`) as the
structure channel alone. Masks go through the same placement.

A slice's own body misleads the estimate where arms or the table join the body, or the body touches both image
edges: on the corpus 16 % of the slices lie more than 10 % from their patient's median estimate (up to 2.4x). One
CT has one pixel size, so each corpus patient group is placed at the median estimate of its slices.
"""

from __future__ import annotations

import numpy as np

from ..engine.anatomy import masks_on_canvas, render_hu, render_structure_only
from ..engine.canvas import Placement, body_mask_8bit, estimated_pixel_mm, slice_placement
from ..engine.preprocessing import body_mask_2d
from ..engine.representation import Preprocessing
from .data import NO_PATIENT, SliceSet


def canvas_of(preprocessing: Preprocessing) -> tuple[int, float]:
    return preprocessing.canvas_size, preprocessing.canvas_pixel_mm


def hu_slices_on_canvas(hu: np.ndarray, lungs: np.ndarray, infection: np.ndarray, placement: Placement | None,
                        preprocessing: Preprocessing, names: list[str], group: str, has_lungs: bool,
                        has_infection: bool) -> SliceSet:
    """HU slices ``[n, rows, cols]`` with their masks as anatomy training slices. ``placement`` None: each slice is
    placed by its own body (pixel size estimated, as for a slice of unknown spacing)."""
    placements = [placement] * len(hu) if placement is not None else \
        [slice_placement(body_mask_2d(s), None, *canvas_of(preprocessing)) for s in hu]
    images = np.concatenate([render_hu(s[None], p, preprocessing) for s, p in zip(hu, placements)])
    lung_masks = np.concatenate([masks_on_canvas(m[None], p) for m, p in zip(lungs, placements)])
    infection_masks = np.concatenate([masks_on_canvas(m[None], p) for m, p in zip(infection, placements)])
    n = len(hu)
    return SliceSet(images, lung_masks, infection_masks, np.full(n, has_lungs), np.full(n, has_infection),
                    list(names), [group] * n, np.ones(n, bool))


def pixel_mm_per_patient(estimates: np.ndarray, groups: list[str]) -> np.ndarray:
    """Each slice's pixel size as the median of its patient group's per-slice estimates (one CT, one pixel size);
    slices without a patient id keep their own."""
    groups_array = np.asarray(groups)
    pooled = np.asarray(estimates, dtype=np.float64).copy()
    for group in set(groups) - {NO_PATIENT}:
        members = groups_array == group
        pooled[members] = np.median(pooled[members])
    return pooled


def corpus_on_canvas(corpus: SliceSet, preprocessing: Preprocessing) -> SliceSet:
    """The corpus' 8-bit CLAHE slices (``[n, 256, 256]``) on the canvas, structure channel only, each centred on
    its body and scaled by its patient's pixel size estimate (:func:`pixel_mm_per_patient`); their density channel
    is empty and flagged absent."""
    bodies = [body_mask_8bit(image) for image in corpus.images]
    pixel_mm = pixel_mm_per_patient(np.array([estimated_pixel_mm(body) for body in bodies]), corpus.groups)
    images, lungs, infection = [], [], []
    for image, lung, lesion, body, size in zip(corpus.images, corpus.lungs, corpus.infection, bodies, pixel_mm):
        placement = slice_placement(body, (size, size), *canvas_of(preprocessing))
        images.append(render_structure_only(image[None], placement))
        lungs.append(masks_on_canvas(lung[None], placement))
        infection.append(masks_on_canvas(lesion[None], placement))
    return SliceSet(np.concatenate(images), np.concatenate(lungs), np.concatenate(infection), corpus.has_lungs,
                    corpus.has_infection, corpus.names, corpus.groups, np.zeros(len(corpus.names), bool))
