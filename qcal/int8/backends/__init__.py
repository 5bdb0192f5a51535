"""One place per backend whose arithmetic reaches past the shared requantization table:
torch's ``x86`` engine when it hands a conv to oneDNN (``onednn``), onnxruntime's MLAS int8
kernels and QDQ operators (``ort``) and its float kernels for a recipe's fp32 layers
(``ort_fp32``). FBGEMM's, QNNPACK's and the ONNX spec's rules are rows of
``qcal.int8.common.requant``; FBGEMM's kernel families and their saturation are in
``qcal.int8.common.saturation``."""
