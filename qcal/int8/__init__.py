"""qcal's integer engine: conv2d, linear and the ops between them, on plain integer tensors.

Bit-exact against torch's fbgemm and qnnpack engines (torch.ops.quantized conv2d / linear /
add / pools) and the ONNX QLinearConv / QLinearMatMul reference:

* ``conv2d`` / ``linear`` (and ``*_detailed`` -> ``KernelResult(out, acc, saturated_pairs,
  requant)``); ``pack_conv2d`` / ``pack_linear`` prepare weights once for repeated calls.
* ``requant_multipliers`` -> ``Requant``: each backend's multipliers, int32 bias and the
  gemmlowp Q31 (multiplier, shift) form (``q31.py``).
* ``add``, ``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``, ``flatten``, and
  ``quantize`` / ``dequantize`` (from ``qcal.qparams``).

Where each backend rounds is documented in ``requant.py`` (layers) and ``ops.py`` (add,
pools); FBGEMM's int16 pair saturation (which on AVX512-VNNI CPUs survives only in its
depthwise kernel) in ``saturation.py``, the x86 instruction set qcal assumes for it
(``instruction_set()``, ``QCAL_CPU``) in ``isa.py``; how the exact int32 accumulator is computed fast in
``accumulate.py``.
"""

from qcal.int8.cpu import has_vnni
from qcal.int8.isa import INSTRUCTION_SETS, AssumedCpu, InstructionSet, assumed_cpu, instruction_set
from qcal.int8.kernels import conv2d, conv2d_detailed, linear, linear_detailed
from qcal.int8.ops import adaptive_avg_pool2d, add, avg_pool2d, flatten, max_pool2d
from qcal.int8.packed import KernelResult, PackedConv2d, PackedLinear, pack_conv2d, pack_linear
from qcal.int8.q31 import q31_requantize, quantize_multiplier
from qcal.int8.requant import BACKENDS, Requant, requant_multipliers, requantize
from qcal.int8.saturation import fbgemm_conv_path, fbgemm_saturates
from qcal.qparams import dequantize, quantize

__all__ = [
    "BACKENDS",
    "INSTRUCTION_SETS",
    "AssumedCpu",
    "InstructionSet",
    "KernelResult",
    "PackedConv2d",
    "PackedLinear",
    "Requant",
    "adaptive_avg_pool2d",
    "add",
    "assumed_cpu",
    "avg_pool2d",
    "conv2d",
    "conv2d_detailed",
    "dequantize",
    "fbgemm_conv_path",
    "fbgemm_saturates",
    "flatten",
    "has_vnni",
    "instruction_set",
    "linear",
    "linear_detailed",
    "max_pool2d",
    "pack_conv2d",
    "pack_linear",
    "q31_requantize",
    "quantize",
    "quantize_multiplier",
    "requant_multipliers",
    "requantize",
]
