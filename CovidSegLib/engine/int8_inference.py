"""Run the network's deep convolutions in int8 on an x86 CPU, from activation ranges measured once and kept in the card.

On a 2-core CPU with AVX2 but no AVX-512 the convolutions are most of a CT's time (about 9 of 16-18 s for
512x512x300 in float32). Each convolution the card names (the 3x3 ones on coarse maps, :func:`worth_int8`)
quantizes its input with a fixed scale, convolves in int8 with int32 sums (weights per output channel,
symmetric), and hands a float32 output on. Everything between convolutions (residual sums, concatenations,
upsampling) and the other convolutions stay float32, so no graph tracing is needed and the swap takes a fraction
of a second at load time. The scales come from the card (``int8_calibration``), measured on training slices by
:mod:`CovidSegLib.training.int8_calibration`, never at run time, so a card gives the same labels on every run;
values beyond the measured range are clipped to it.

Activations use 7 bits (0..127): on CPUs without VNNI the int8 kernels add pairs of products in 16 bits, which
8-bit activations can overflow; with 7 bits no such sum saturates. The segmentation head (the last convolution,
whose logits are thresholded) always stays float32.
"""
from __future__ import annotations

import functools
import platform
import warnings
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # torch is imported where a network runs, never at package import
    import torch

#: Levels an activation may take (7 bits, see the module docstring).
ACTIVATION_LEVELS = 127
#: Convolutions left in float32: the head's output is thresholded directly.
FLOAT_PREFIXES = ("segmentation_head",)
#: PyTorch's quantized engines for x86 CPUs; elsewhere (ARM: qnnpack) the network stays float32.
X86_ENGINES = ("x86", "fbgemm", "onednn")


@functools.lru_cache(maxsize=None)
def int8_supported() -> bool:
    """Whether this machine can run the int8 convolutions: an x86-64 CPU with one of PyTorch's x86 engines, and a
    PyTorch that still has quantized tensors (2.14 deprecates them). Tried on a tiny convolution, once; where it
    fails the engine runs float32, slower but the same model."""
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64") or torch.backends.quantized.engine not in X86_ENGINES:
        return False
    try:
        _quiet_deprecation()
        conv = _int8_conv_class()(torch.nn.Conv2d(1, 1, 3, padding=1).eval(), [0.0, 1.0, -1.0, 1.0], 127)
        with torch.inference_mode():
            return tuple(conv(torch.rand(1, 1, 4, 4)).shape) == (1, 1, 4, 4)
    except (AttributeError, ImportError, NotImplementedError, RuntimeError):
        return False


def _quiet_deprecation() -> None:
    """PyTorch 2.14 warns at the first quantized tensor that they are deprecated; users need not see that."""
    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                            category=UserWarning)


def quantization_parameters(low: float, high: float, levels: int = ACTIVATION_LEVELS) -> tuple[float, int]:
    """Scale and zero point that map ``[low, high]`` (widened to hold 0, which must stay exact) onto ``0..levels``."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = max(high - low, 1e-8) / levels
    return scale, min(max(int(round(-low / scale)), 0), levels)


def convolutions(network: "torch.nn.Module") -> list[str]:
    """Names of the convolutions that may run in int8 (all but the segmentation head), in module order."""
    import torch

    return [name for name, module in network.named_modules()
            if isinstance(module, torch.nn.Conv2d) and not name.startswith(FLOAT_PREFIXES)]


def worth_int8(convolution: "torch.nn.Conv2d", output_side: int, input_side: int) -> bool:
    """Whether int8 pays for this convolution on a 2-core AVX2 CPU: 3x3 (or larger) convolutions on the deep,
    coarse feature maps (at most 1/8 of the input's side), where channels are many. Measured layer by layer on
    the bundled network, batch 8: there int8 took 147 against 225 ms in float32 channels-last; on the fine maps
    (few channels, many pixels) and for 1x1 convolutions int8 was slower (decoder block 3: 55 against 26 ms)."""
    return max(convolution.kernel_size) > 1 and output_side * 8 <= input_side


def layers_worth_int8(network: "torch.nn.Module", ranges: dict[str, list[float]], input_side: int) -> list[str]:
    """The convolutions of ``ranges`` (:func:`record_ranges`' result, which carries each output's side) that
    :func:`worth_int8` picks, in the network's order: the layers a calibration names."""
    modules = dict(network.named_modules())
    return [name for name, seen in ranges.items() if worth_int8(modules[name], int(seen[4]), input_side)]


def record_ranges(network: "torch.nn.Module", batches: Iterable["torch.Tensor"]) -> dict[str, list[float]]:
    """For each convolution :func:`convolutions` names, over ``batches`` (in the network's input
    representation): ``[in_low, in_high, out_low, out_high, output_side]``, the smallest and largest input and
    output and the output's width. Run on the network the engine runs: eval mode, BatchNorms folded, since
    folding changes the convolutions' outputs."""
    import torch

    ranges: dict[str, list[float]] = {}

    def recorder(name: str):
        def hook(module, inputs, output) -> None:
            seen = ranges.setdefault(name, [float("inf"), float("-inf"), float("inf"), float("-inf"), 0])
            seen[0] = min(seen[0], float(inputs[0].min()))
            seen[1] = max(seen[1], float(inputs[0].max()))
            seen[2] = min(seen[2], float(output.min()))
            seen[3] = max(seen[3], float(output.max()))
            seen[4] = int(output.shape[-1])
        return hook

    modules = dict(network.named_modules())
    handles = [modules[name].register_forward_hook(recorder(name)) for name in convolutions(network)]
    try:
        with torch.inference_mode():
            for batch in batches:
                network(batch)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def _int8_conv_class():
    """The int8 convolution module class (defined here, not at import: torch is imported lazily)."""
    import torch
    from torch.ao.nn.quantized import Conv2d as QuantizedConv2d

    class Int8Conv2d(torch.nn.Module):
        """A float32 ``Conv2d`` computed in int8: quantize the input, convolve, hand a float32 output on."""

        def __init__(self, conv: torch.nn.Conv2d, ranges: list[float], levels: int) -> None:
            super().__init__()
            self.input_scale, self.input_zero_point = quantization_parameters(ranges[0], ranges[1], levels)
            output_scale, output_zero_point = quantization_parameters(ranges[2], ranges[3], levels)
            weight = conv.weight.detach().float()
            weight_scales = (weight.abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / 127).double()
            quantized_weight = torch.quantize_per_channel(
                weight, weight_scales, torch.zeros(len(weight_scales), dtype=torch.long), 0, torch.qint8)
            bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(conv.out_channels)
            self.convolution = QuantizedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                               conv.padding, conv.dilation, conv.groups, True, conv.padding_mode)
            self.convolution.set_weight_bias(quantized_weight, bias)
            self.convolution.scale, self.convolution.zero_point = output_scale, output_zero_point

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            quantized = torch.quantize_per_tensor(x, self.input_scale, self.input_zero_point,
                                                  torch.quint8)
            return self.convolution(quantized).dequantize()

    return Int8Conv2d


def quantize_convolutions(network: "torch.nn.Module", calibration: dict[str, Any]) -> int:
    """Swap, in place, each convolution the card's calibration names for its int8 version; returns how many.

    ``calibration`` is the card's ``int8_calibration``: ``{"activation_levels": 127, "ranges": {name: [in_low,
    in_high, out_low, out_high, ...]}, ...}``; the convolutions it does not name stay float32. A name that is not
    one of the network's convolutions (another architecture, a card edited by hand) is refused rather than run
    half calibrated. For inference only (eval mode, BatchNorms folded first).
    """
    if network.training:
        raise ValueError("int8 convolutions are for inference: call eval() first")
    ranges = calibration.get("ranges", {})
    levels = int(calibration.get("activation_levels", ACTIVATION_LEVELS))
    if not 1 <= levels <= 255:
        raise ValueError(f"the card's int8 calibration asks for {levels} activation levels (1..255 fit in 8 bits)")
    unknown = sorted(set(ranges) - set(convolutions(network)))
    if unknown:
        raise ValueError(f"the card's int8 calibration names {len(unknown)} layers that are not convolutions of "
                         f"this network outside its segmentation head (first: {unknown[0]})")
    _quiet_deprecation()
    module_class = _int8_conv_class()
    modules = dict(network.named_modules())
    for name in ranges:
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else network
        setattr(parent, child, module_class(modules[name], ranges[name], levels))
    return len(ranges)
