"""Batch augmentation on the CPU for CT slices, in torch (one affine resample per batch, no per-sample loops).

Geometry: rotation, zoom (a body crop, a full field of view and a tight crop around the lungs must all look
familiar), shift, small elastic deformation, left-right flip (harmless: sides are assigned from patient
coordinates afterwards).
Intensity: window jitter, gamma, contrast and brightness, blur and noise, so that scanners and reconstruction
kernels other than the training data's fall inside what the network has seen.
Resolution: some slices are shrunk and enlarged again (bilinear), so coarse CT (3 mm pixels, as in Slicer's
CTChest sample, or thick-slice reconstructions) looks familiar; blur covers smooth kernels and thick slices.
Lesions (off by default, a study): another slice's infection pasted into this slice's lungs, so that a lesion is
seen over other patients' lungs, CTs without COVID-19 included, not only over the lung it came with.
Anatomy inputs (structure, density, density-present; CovidSegLib.engine.anatomy): geometry moves the two images
together; the intensity jitter that stands for other scanners' contrast applies to the structure image only, since
the density image is absolute HU and must stay so (it gets a small offset of a few HU, noise and the resolution
changes); the flag is never resampled. ``density_dropout`` hides the density of that share of the slices with
no infection labelled, so that the structure image alone also learns what is not infection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..slices.dataset import MASK_OUTPUTS


@dataclass(frozen=True)
class AugmentConfig:
    rotation_degrees: float = 12.0
    zoom: tuple[float, float] = (0.75, 1.35)
    shift: float = 0.08
    flip_probability: float = 0.5
    elastic: float = 0.015  # amplitude of a smooth random displacement, in units of the half image side
    window_jitter: float = 0.12
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.08
    blur_probability: float = 0.2
    noise_sigma: float = 0.03
    lowres_probability: float = 0.2
    lowres_factor: tuple[float, float] = (1.5, 4.0)  # the image is shrunk by this factor, then enlarged back
    #: share of the slices that get another slice's infection pasted into their lungs (0: off; no random number
    #: is drawn for it then, so runs recorded without it resume bit for bit)
    copy_paste_probability: float = 0.0
    #: anatomy inputs: the density channel's offset (a share of its window: 0.02 of 1324 HU is about 26 HU)
    density_offset: float = 0.02
    #: anatomy inputs: share of the slices labelled without infection whose density channel is hidden
    density_dropout: float = 0.0


#: the masks' channels, in the order training stacks them
LUNGS, INFECTION = MASK_OUTPUTS.index("lungs"), MASK_OUTPUTS.index("infection")


def augment(images: torch.Tensor, masks: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
            labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment ``images`` ``[n, 1, h, w]`` in 0..1 and their ``masks`` ``[n, c, h, w]`` in 0/1 together;
    ``labelled`` ``[n, c]`` (which masks are known) is needed for lesion pasting only. Anatomy inputs
    ``[n, 3, h, w]`` go through :func:`augment_anatomy`."""
    if images.shape[1] == 3:
        return augment_anatomy(images, masks, config, generator, labelled)
    n = images.shape[0]
    if config.copy_paste_probability > 0 and labelled is not None:
        images, masks = paste_lesions(images, masks, labelled, config.copy_paste_probability, generator)
    grid = random_grid(n, images.shape[-2:], config, generator)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()

    return degrade(jitter_contrast(images, config, generator), config, generator), masks


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * (high - low) + low).view(n, 1, 1, 1)


def jitter_contrast(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Another scanner's contrast: window, gamma, contrast and brightness jitter of images in 0..1."""
    n = images.shape[0]
    low = _uniform(n, -config.window_jitter, config.window_jitter, generator)
    high = 1 + _uniform(n, -config.window_jitter, config.window_jitter, generator)
    images = ((images - low) / (high - low)).clamp(0, 1)
    images = images ** _uniform(n, *config.gamma, generator)
    return images * _uniform(n, *config.contrast, generator) + _uniform(n, -config.brightness, config.brightness,
                                                                        generator)


def degrade(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Lower resolution, blur and noise (coarse CT, smooth kernels, thick slices, low dose), clamped to 0..1."""
    n = images.shape[0]
    images = _lower_resolution(images, config, generator)
    blur = (torch.rand(n, generator=generator) < config.blur_probability).view(n, 1, 1, 1)
    images = torch.where(blur, F.avg_pool2d(images, 3, stride=1, padding=1), images)
    sigma = _uniform(n, 0, config.noise_sigma, generator)
    return (images + torch.randn(images.shape, generator=generator) * sigma).clamp(0, 1)


def random_grid(n: int, size: tuple[int, int], config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """The sampling grid of one batch's geometry: rotation, zoom, left-right flip, shift, and a small elastic
    deformation (a 5x5 random displacement field, smoothly upsampled). The draws come in one fixed order, so runs
    recorded before this was a function resume bit for bit."""
    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-config.rotation_degrees, config.rotation_degrees) * math.pi / 180
    scale = 1.0 / uniform(*config.zoom)  # grid scale < 1 zooms in
    flip = torch.where(torch.rand(n, generator=generator) < config.flip_probability, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, uniform(-config.shift, config.shift)], dim=1),
        torch.stack([sin * flip, cos, uniform(-config.shift, config.shift)], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, [n, 1, *size], align_corners=False)
    if config.elastic > 0:
        coarse = torch.randn((n, 2, 5, 5), generator=generator) * config.elastic
        field = F.interpolate(coarse, size=tuple(size), mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1)
    return grid


def _lower_resolution(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Shrink a random share of the images by a random factor and enlarge them back (detail lost, size kept)."""
    chosen = torch.rand(images.shape[0], generator=generator) < config.lowres_probability
    factors = torch.rand(images.shape[0], generator=generator) * (config.lowres_factor[1] - config.lowres_factor[0]) \
        + config.lowres_factor[0]
    if not chosen.any():
        return images
    images = images.clone()
    side = images.shape[-1]
    for index in torch.nonzero(chosen).flatten().tolist():
        small = max(8, int(round(side / float(factors[index]))))
        shrunk = F.interpolate(images[index:index + 1], size=(small, small), mode="area")
        images[index:index + 1] = F.interpolate(shrunk, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return images


def paste_lesions(images: torch.Tensor, masks: torch.Tensor, labelled: torch.Tensor, probability: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random other slice's infection (its pixels, mirrored left-right half the time) into the lungs of a
    ``probability`` share of the slices, before any other augmentation, and add it to their infection mask.

    Why: the corpus holds 20 patients, and a network can learn a lesion together with the lung around it; a
    pasted lesion sits over another patient's lung, or a CT without COVID-19's. Only where the recipient's lungs
    and infection and the donor's infection are all labelled (POPI has no lung mask). The pasted region is the
    donor's infection inside the recipient's lungs; a 3×3 mean softens its edge so that no seam marks it.
    """
    n = images.shape[0]
    chosen = torch.rand(n, generator=generator) < probability
    donors = torch.randperm(n, generator=generator)
    mirrored = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1)
    usable = chosen & labelled[:, LUNGS].bool() & labelled[:, INFECTION].bool() & labelled[donors, INFECTION].bool()
    if not usable.any():
        return images, masks
    donors_seen = torch.cat([images, masks[:, INFECTION:INFECTION + 1]], dim=1)[donors]
    donor_images, donor_lesions = torch.where(mirrored, donors_seen.flip(-1), donors_seen).split(1, dim=1)
    lungs = masks[:, LUNGS:LUNGS + 1]
    region = donor_lesions * lungs * usable.view(n, 1, 1, 1).to(masks.dtype)
    alpha = F.avg_pool2d(region, 3, stride=1, padding=1) * lungs
    images = images * (1 - alpha) + donor_images * alpha
    masks = masks.clone()
    masks[:, INFECTION:INFECTION + 1] = torch.maximum(masks[:, INFECTION:INFECTION + 1], region)
    return images, masks


def augment_anatomy(images: torch.Tensor, masks: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                    labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`augment` for anatomy inputs ``[n, 3, h, w]`` (structure, density, density present): one geometry for
    both images and the masks, the contrast jitter on the structure image only, and the flag kept as it was."""
    n = images.shape[0]

    present = images[:, 2:3, :1, :1].clone()
    grid = random_grid(n, images.shape[-2:], config, generator)
    moved = F.grid_sample(images[:, :2], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    structure, density = moved[:, :1], moved[:, 1:2]

    structure = jitter_contrast(structure, config, generator)
    density = density + _uniform(n, -config.density_offset, config.density_offset, generator)
    both = degrade(torch.cat([structure, density], dim=1), config, generator)
    if config.density_dropout > 0 and labelled is not None:
        no_infection = labelled[:, INFECTION].bool() & (masks[:, INFECTION].flatten(1).amax(dim=1) == 0)
        hidden = (torch.rand(n, generator=generator) < config.density_dropout) & no_infection
        present = torch.where(hidden.view(n, 1, 1, 1), torch.zeros_like(present), present)
    present = present.expand(-1, 1, *images.shape[-2:])
    return torch.cat([both[:, :1], both[:, 1:2] * present, present], dim=1), masks
