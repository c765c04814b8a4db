"""Slice-wise batched U-Net inference over a CT volume, on GPU or CPU.

Work is kept small rather than made fast: slices without enclosed air are skipped, on thin-slice CT the network
runs on slices about 2.5 mm apart and the slices between get interpolated logits, the next batch is prepared on
a worker thread while the network runs, and the
outputs are held as two boolean volumes (no float copies of the CT). The network's image is made from HU by the
model card's preprocessing, the code training uses too (:mod:`CovidSegLib.engine.representation`). An anatomy model
sees every slice on the canvas of :mod:`CovidSegLib.engine.canvas` (one placement per volume, by its spacing,
centred on the body) and its logits are brought back to the slice grid through the same placement; a clahe model
sees whole slices, as its training corpus did; the body crop applies to window-mode models only.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .density import apply_infection_floor, split_infection
from ..errors import Cancelled, CovidSegError
from ..labels import LabelInfo, output_labels
from .model import LoadedModel
from ..io.orientation import from_canonical, to_canonical
from ..checks.plausibility import no_lung_finding
from .postprocess import postprocess
from .canvas import Placement, volume_placement
from .preprocessing import BodySample, Box, body_box, candidate_slices
from .representation import network_input, represent
from ..io.volume import Geometry, Volume

#: Called with the fraction done (0..1); returning True cancels the run.
ProgressCallback = Callable[[float], Optional[bool]]

DEFAULT_BATCH = {"cuda": 32, "mps": 8, "cpu": 8}
#: On thin-slice CT the network runs on slices at most this far apart (mm); the slices between get the logits
#: of their two inferred neighbours, interpolated linearly. Lungs and lesions change little over 2.5 mm, the
#: slice thickness many 2D COVID-19 pipelines work at.
INFERRED_SLICE_GAP_MM = 2.5
AIR_HU = -1024
#: Logit given to the slice where it reaches past an anatomy model's canvas: far below any threshold.
OFF_CANVAS_LOGIT = -30.0


@dataclass(frozen=True)
class EngineSwitches:
    """The work-saving ideas, each switchable so the benchmark can measure what it pays (all on by default)."""

    crop_to_body: bool = True
    skip_slices_without_air: bool = True
    interpolate_thin_slices: bool = True
    prefetch_next_batch: bool = True
    channels_last: bool = True
    #: int8 convolutions on an x86 CPU when the card is calibrated for them (CovidSegLib.engine.int8_inference)
    int8_on_cpu: bool = True


@dataclass
class SegmentationResult:
    labels: np.ndarray  # on the input grid, [k, j, i], values of label_infos
    label_infos: tuple[LabelInfo, ...]  # labels.OUTPUT_LABELS, or SPLIT_OUTPUT_LABELS when GGO is told apart
    device: str
    batch_size: int
    slices_total: int
    slices_inferred: int
    precision: str = "float32"  # of the network's arithmetic: int8, float32 or float16 (SliceSegmenter.precision)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    volume: Optional[Volume] = None  # the CT in HU that was segmented (set by the file pipeline, for reports)
    no_lung: Optional[str] = None  # what :func:`no_lung_note` said, when the lungs found are too few to be lungs


def select_device(requested: str = "auto") -> "torch.device":  # noqa: F821
    """``auto``: CUDA, then Apple MPS, then CPU. An explicit device that is absent is an error, not a fallback."""
    import torch

    requested = requested.lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested in ("gpu", "cuda") or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CovidSegError("device cuda requested, but no CUDA GPU is available (use --device cpu or auto)")
        return torch.device("cuda" if requested == "gpu" else requested)
    if requested == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise CovidSegError("device mps requested, but Apple MPS is not available")
        return torch.device("mps")
    if requested == "cpu":
        return torch.device("cpu")
    raise CovidSegError(f"unknown device {requested!r}; use auto, cpu, cuda (gpu) or mps")


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def inference_network(model: LoadedModel, device: "torch.device", int8: bool = True  # noqa: F821
                      ) -> tuple["torch.nn.Module", str]:  # noqa: F821
    """The model's network as the engine runs it on ``device``, and its arithmetic ("int8", "float32", or
    "float16" on CUDA): eval mode, BatchNorms folded, and on an x86 CPU with a calibrated card and ``int8`` the
    convolutions the card names in int8 (on a copy: the loaded model's network stays float32 for a segmenter
    that asks for float32). A network already prepared (it says its ``inference_precision``, as
    :func:`CovidSegLib.training.memo.memoised` does) is run as it is."""
    import copy

    from .batchnorm_folding import fold_batch_norms
    from .int8_inference import int8_supported, quantize_convolutions

    network = model.network.to(device).eval()
    prepared = getattr(network, "inference_precision", None)
    if prepared is not None:
        return network, prepared
    fold_batch_norms(network)  # in place: this network serves inference only from here on
    if int8 and device.type == "cpu" and model.card.int8_calibration and int8_supported():
        network = copy.deepcopy(network)
        quantize_convolutions(network, model.card.int8_calibration)
        return network, "int8"
    return network, "float16" if device.type == "cuda" else "float32"


class SliceSegmenter:
    """Runs one model on batches of canonical slices; halves the batch and retries on out-of-memory.

    On an x86 CPU, with a card calibrated for it and ``int8``, the convolutions the card names run in int8
    (:mod:`CovidSegLib.engine.int8_inference`); ``precision`` says which ran ("int8", "float32", or "float16" on CUDA).
    """

    def __init__(self, model: LoadedModel, device: "torch.device", batch_size: int | None = None,  # noqa: F821
                 channels_last: bool = True, int8: bool = True) -> None:
        import torch

        self.torch = torch
        self.card = model.card
        self.device = device
        self.batch_size = batch_size or DEFAULT_BATCH.get(device.type, 8)
        self.network, self.precision = inference_network(model, device, int8)
        # channels-last: ~25% faster float32 convolutions on CPU (the int8 ones take it as it comes)
        self.channels_last = channels_last and device.type == "cpu"
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.lungs_channel = self.card.output_index("lungs")
        self.infection_channel = self.card.output_index("infection")

    @property
    def on_canvas(self) -> bool:
        """Whether the card's representation is the anatomy canvas (frames are :class:`Placement`)."""
        return self.card.preprocessing.mode == "anatomy"

    def frame_for_volume(self, hu: np.ndarray, pixel_mm: tuple[float, float]) -> "Box | Placement":
        """The frame of every slice of a canonical volume: its canvas placement for an anatomy model, else the
        whole slice (the body crop of window-mode models is the caller's)."""
        if self.on_canvas:
            preprocessing = self.card.preprocessing
            return volume_placement(hu, pixel_mm, preprocessing.canvas_size, preprocessing.canvas_pixel_mm)
        return whole_slice_box(hu.shape[1:])

    def prepare(self, slices_hu: np.ndarray, box: "Box | Placement") -> "torch.Tensor":  # noqa: F821
        """The network input of a stack of HU slices, on the CPU: the card's representation, then resized.

        ``box`` is the frame the results go back into: the canvas placement for an anatomy model; for a clahe
        model the whole slice (:func:`whole_slice_box`), which its representation pads to a square itself.
        """
        preprocessing = self.card.preprocessing
        if self.on_canvas:
            from .anatomy import anatomy_network_input, render_hu

            if not isinstance(box, Placement):
                raise ValueError("an anatomy model places slices on its canvas: its frame is a Placement")
            return anatomy_network_input(render_hu(slices_hu, box, preprocessing), np.ones(len(slices_hu), bool))
        if preprocessing.mode == "clahe":
            if box != whole_slice_box(slices_hu.shape[-2:]):
                raise ValueError("a clahe model runs on whole slices, not on a crop")
            images = represent(slices_hu, preprocessing)
        else:
            images = represent(box.crop(slices_hu, fill=AIR_HU), preprocessing)
        return self.prepare_images(images)

    def prepare_images(self, images: np.ndarray, placement: Placement | None = None) -> "torch.Tensor":  # noqa: F821
        """The network input of 8-bit images already in the model's representation (e.g. corpus slices); an
        anatomy model takes them as its structure channel, placed by ``placement``, without density."""
        if self.on_canvas:
            from .anatomy import anatomy_network_input, render_structure_only

            if placement is None:
                raise ValueError("an anatomy model needs the placement of 8-bit images on its canvas")
            return anatomy_network_input(render_structure_only(images, placement), np.zeros(len(images), bool))
        return network_input(images, self.card.input_size)

    def logits(self, batch: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """Lung and infection logits ``[n, 2, size, size]`` (float32, CPU) for one prepared batch."""
        torch = self.torch
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16,
                                                    enabled=self.device.type == "cuda"):
            logits = self.network(batch)
            return logits[:, [self.lungs_channel, self.infection_channel]].float().cpu()

    def masks(self, logits: "torch.Tensor", side: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: F821
        """Lung and infection masks at crop resolution: logits resized to the crop, then thresholded."""
        resized = self.torch.nn.functional.interpolate(logits, size=(side, side), mode="bilinear",
                                                       align_corners=False)
        masks = (resized > _logit(self.card.threshold)).numpy()
        return masks[:, 0], masks[:, 1]

    def masks_on_slices(self, logits: "torch.Tensor", frame: "Box | Placement",  # noqa: F821
                        shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Lung and infection masks ``[n, rows, cols]`` on the slice grid ``shape`` for logits made in ``frame``."""
        if isinstance(frame, Placement):
            cut = _logit(self.card.threshold)
            values = logits.numpy()
            lungs = np.zeros((len(values),) + tuple(shape), bool)
            infection = np.zeros_like(lungs)
            for index, (lung_logits, infection_logits) in enumerate(values):
                lungs[index] = frame.from_canvas(lung_logits, shape, OFF_CANVAS_LOGIT) > cut
                infection[index] = frame.from_canvas(infection_logits, shape, OFF_CANVAS_LOGIT) > cut
            return lungs, infection
        crops = self.masks(logits, frame.side)
        out = []
        for crop in crops:
            full = np.zeros((len(crop),) + tuple(shape), bool)
            frame.paste(crop, full)
            out.append(full)
        return out[0], out[1]

    def predict(self, batch: "torch.Tensor", side: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: F821
        """Lung and infection masks at crop resolution for one prepared batch."""
        return self.masks(self.logits_with_retry(batch), side)

    def logits_with_retry(self, batch: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """Logits, splitting the batch in halves (and remembering the smaller size) when memory runs out."""
        if len(batch) > self.batch_size:  # prepared before an earlier batch showed that this size does not fit
            return self.torch.cat([self.logits_with_retry(part) for part in self.torch.split(batch, self.batch_size)])
        try:
            return self.logits(batch)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error) or len(batch) == 1:
                raise
            if self.device.type == "cuda":
                self.torch.cuda.empty_cache()
            self.batch_size = max(1, len(batch) // 2)
            return self.logits_with_retry(batch)


class _InlineExecutor:
    """Runs "submitted" work at once, in this thread: the engine without its prefetch thread."""

    def __enter__(self) -> "_InlineExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, function, *args):
        from concurrent.futures import Future

        future: Future = Future()
        future.set_result(function(*args))
        return future


def no_lung_note(labels: np.ndarray, geometry: Geometry) -> str | None:
    """:func:`CovidSegLib.checks.plausibility.no_lung_finding` for a label map: every label counts as lung-like."""
    return no_lung_finding(np.count_nonzero(labels) * geometry.voxel_volume_ml)


def whole_slice_box(shape: tuple[int, int]) -> Box:
    """The square that holds a whole slice, padded at the bottom and right (as the representation pads)."""
    return Box(0, 0, max(shape))


def _logit(probability: float) -> float:
    return float(np.log(probability / (1.0 - probability)))


def inference_step(slice_spacing_mm: float) -> int:
    """Run the network on every ``step``-th slice so inferred slices are at most ``INFERRED_SLICE_GAP_MM`` apart."""
    return max(1, int(INFERRED_SLICE_GAP_MM // slice_spacing_mm))


def plan_interpolation(slices: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``slices`` the network sees, and for each other one ``(slice, below, above, weight)``.

    ``below`` and ``above`` index the inferred slices; every run of consecutive slices has its first and last
    slice inferred, so nothing is extrapolated and no gap between runs is bridged.
    """
    inferred: list[int] = []
    between: list[tuple[int, int, int, float]] = []
    runs = np.split(slices, np.flatnonzero(np.diff(slices) != 1) + 1) if len(slices) else []
    for run in runs:
        keep = list(run[::step]) + ([run[-1]] if (len(run) - 1) % step else [])
        first = len(inferred)
        inferred.extend(keep)
        for position, index in enumerate(keep[:-1]):
            following = keep[position + 1]
            for middle in range(index + 1, following):
                between.append((middle, first + position, first + position + 1,
                                (middle - index) / (following - index)))
    return np.asarray(inferred, dtype=int), np.asarray(between, dtype=float).reshape(-1, 4)


def interpolate_logits(logits: "torch.Tensor", between: np.ndarray) -> "torch.Tensor":  # noqa: F821
    """Logits of skipped slices, rows ``(slice, below, above, weight)`` of :func:`plan_interpolation`."""
    import torch

    below = torch.from_numpy(between[:, 1].astype(np.int64))
    above = torch.from_numpy(between[:, 2].astype(np.int64))
    weight = torch.from_numpy(between[:, 3].astype(np.float32)).view(-1, 1, 1, 1)
    return logits[below] * (1 - weight) + logits[above] * weight


def run_network(segmenter: "SliceSegmenter", hu: np.ndarray, indices: np.ndarray, box: "Box | Placement",
                prefetch: bool,
                report: Callable[[float], None]) -> "torch.Tensor":  # noqa: F821
    """Logits ``[len(indices), 2, size, size]`` of the given canonical slices; the next batch is cropped and
    resized on a worker thread while the network runs (when ``prefetch``)."""
    import torch

    size = segmenter.card.input_size
    logits = torch.empty((len(indices), 2, size, size), dtype=torch.float32)
    with ThreadPoolExecutor(max_workers=1) if prefetch else _InlineExecutor() as worker:
        position = 0
        pending = worker.submit(segmenter.prepare, hu[indices[:segmenter.batch_size]], box) if len(indices) else None
        while pending is not None:
            batch = pending.result()
            following = indices[position + len(batch):position + len(batch) + segmenter.batch_size]
            pending = worker.submit(segmenter.prepare, hu[following], box) if len(following) else None
            logits[position:position + len(batch)] = segmenter.logits_with_retry(batch)
            position += len(batch)
            report(position / len(indices))
    return logits


def paste_masks(segmenter: "SliceSegmenter", logits: "torch.Tensor", indices: np.ndarray,  # noqa: F821
                frame: "Box | Placement", lungs: np.ndarray, infection: np.ndarray) -> None:
    """Threshold logits on the slice grid and write them into the canonical volumes at ``indices`` (each slice is
    written once, so the masks of a crop replace the slice's empty masks)."""
    lungs[indices], infection[indices] = segmenter.masks_on_slices(logits, frame, lungs.shape[1:])


def segment_volume(
    volume: Volume,
    model: LoadedModel,
    device: str = "auto",
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    switches: EngineSwitches = EngineSwitches(),
    separate_infection: bool = True,
) -> SegmentationResult:
    """Segment a validated CT in HU (see :func:`CovidSegLib.checks.intensity.prepare_ct`); labels on its exact grid.

    Infection comes out as ground-glass opacity and consolidation when the card has a rule for that
    (:mod:`CovidSegLib.engine.density`) and ``separate_infection``; else as one infection label."""
    started = time.perf_counter()
    canonical, plan = to_canonical(volume)
    hu = canonical.array
    pixel_mm = float(np.mean(canonical.geometry.spacing[:2]))
    crop_to_body = switches.crop_to_body and model.card.preprocessing.crop == "body"
    body = BodySample.of(hu, pixel_mm)
    slices = candidate_slices(hu, body, pixel_mm) if switches.skip_slices_without_air else np.arange(hu.shape[0])
    segmenter = SliceSegmenter(model, select_device(device), batch_size, switches.channels_last,
                               switches.int8_on_cpu)
    spacing = canonical.geometry.spacing
    box = body_box(hu, pixel_mm) if crop_to_body else \
        segmenter.frame_for_volume(hu, (float(spacing[1]), float(spacing[0])))
    lungs = np.zeros(hu.shape, dtype=bool)
    infection = np.zeros(hu.shape, dtype=bool)
    analysed = time.perf_counter()

    def report(fraction: float) -> None:
        if progress is not None and progress(fraction):
            raise Cancelled(f"{volume.source}: segmentation cancelled")

    report(0.0)
    step = inference_step(float(canonical.geometry.spacing[2])) if switches.interpolate_thin_slices else 1
    inferred, between = plan_interpolation(slices, step)
    logits = run_network(segmenter, hu, inferred, box, switches.prefetch_next_batch,
                         lambda fraction: report(0.8 * fraction))
    chunk_size = segmenter.batch_size  # masks at crop resolution are large: a batch at a time
    for start in range(0, len(inferred), chunk_size):
        paste_masks(segmenter, logits[start:start + chunk_size], inferred[start:start + chunk_size], box, lungs,
                    infection)
    for start in range(0, len(between), chunk_size):
        chunk = between[start:start + chunk_size]
        paste_masks(segmenter, interpolate_logits(logits, chunk), chunk[:, 0].astype(int), box, lungs, infection)
        report(0.8 + 0.1 * min(start + chunk_size, len(between)) / len(between))
    network_done = time.perf_counter()
    pixel_rows_cols = (float(spacing[1]), float(spacing[0]))
    floor = model.card.floor_rule()
    if floor is not None:
        lungs |= infection  # what falls under the floor stays lung; postprocess decides lungs on the union anyway
        infection = apply_infection_floor(infection, hu, pixel_rows_cols, floor)
    labels = postprocess(lungs, infection, canonical.geometry, body=body)
    rule = model.card.split_rule() if separate_infection else None
    if rule is not None:
        labels = split_infection(labels, hu, pixel_rows_cols, rule)
    labels = from_canonical(labels, plan)
    report(1.0)
    finished = time.perf_counter()
    no_lung = no_lung_note(labels, volume.geometry)
    return SegmentationResult(
        labels=labels,
        label_infos=output_labels(rule is not None),
        device=str(segmenter.device),
        batch_size=segmenter.batch_size,
        slices_total=hu.shape[0],
        slices_inferred=len(inferred),
        precision=segmenter.precision,
        seconds={"analysis": analysed - started, "inference": network_done - analysed,
                 "postprocess": finished - network_done, "total": finished - started},
        notes=[no_lung] if no_lung else [],
        no_lung=no_lung,
    )
