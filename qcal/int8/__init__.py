"""qcal's integer engine: conv2d, linear and the ops between them, on plain integer tensors.

Bit-exact against torch's fbgemm and qnnpack engines (torch.ops.quantized conv2d / linear /
add / pools) and the ONNX QLinearConv / QLinearMatMul reference:

* ``conv2d`` / ``linear`` (and ``*_detailed`` -> ``KernelResult(out, acc, saturated_pairs,
  requant)``); ``pack_conv2d`` / ``pack_linear`` prepare weights once for repeated calls.
* ``requant_multipliers`` -> ``Requant``: each backend's multipliers, int32 bias and the
  gemmlowp Q31 (multiplier, shift) form (``q31.py``).
* ``add``, ``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``, ``flatten``, and
  ``quantize`` / ``dequantize`` (from ``qcal.qparams``).

Laid out by what it models:

* this folder: the engine's entry points: ``kernels`` (one-shot conv2d / linear), ``packed``
  (weights prepared once), ``pack_cache``, ``qadd`` (add), ``ops`` (pools), ``layer_ops`` (what
  a whole-model program calls);
* ``common/``: what every backend shares: the exact accumulator (``accumulate``, with oneDNN as
  one of its engines in ``onednn_sums``), each flavour's requantization (``requant``: fbgemm,
  qnnpack, onnx, ort, q31, oneDNN; ``q31``, ``exact_f32``), int16 pair saturation
  (``saturation``, ``pair_sites``) and the checks and refusals every layer goes through
  (``layer_checks``);
* ``backends/``: torch's x86 engine's oneDNN route (``onednn``) and onnxruntime's MLAS
  (``ort``, ``ort_fp32``);
* ``native/``: the C kernel running FBGEMM's AVX2 arithmetic, its build and load, and which
  layers take it (``route``);
* ``cpu/``: the CPU emulated: this machine's flags, FBGEMM's instruction set per kernel family
  (``isa``: ``QCAL_CPU``, ``FBGEMM_ENABLE_INSTRUCTIONS``), MLAS's dispatch (``mlas``:
  ``QCAL_ORT_CPU``) and what ``qcal cpu`` reports (``report``).
"""

from qcal.int8.common.q31 import q31_requantize, quantize_multiplier
from qcal.int8.common.requant import BACKENDS, Requant, requant_multipliers, requantize
from qcal.int8.common.saturation import fbgemm_conv_path, fbgemm_saturates
from qcal.int8.cpu.flags import has_vnni
from qcal.int8.cpu.isa import (
    INSTRUCTION_SETS,
    AssumedCpu,
    InstructionSet,
    assumed_cpu,
    instruction_set,
)
from qcal.int8.kernels import conv2d, conv2d_detailed, linear, linear_detailed
from qcal.int8.ops import adaptive_avg_pool2d, avg_pool2d, flatten, max_pool2d
from qcal.int8.packed import KernelResult, PackedConv2d, PackedLinear, pack_conv2d, pack_linear
from qcal.int8.qadd import add
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
