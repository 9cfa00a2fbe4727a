"""numba kernels, installed as halfsim.kernels: rounding, accumulation (GEMM, convolution,
reductions) and tensor-core block arithmetic. Compiled lazily and cached on disk."""
