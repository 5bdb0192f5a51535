"""What every backend flavour shares: the exact int32 accumulator (``accumulate``), the
requantization of each flavour from one table (``requant``: fbgemm, qnnpack, onnx, ort, q31 and
x86's oneDNN rules; ``q31`` the gemmlowp fixed-point form, ``exact_f32`` float32-exact sums),
int16 pair saturation (``saturation``, ``pair_sites``: FBGEMM's and MLAS's ``vpmaddubsw``
pairs), and the argument checks and refusals every layer goes through (``layer_checks``)."""
