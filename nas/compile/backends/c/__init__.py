"""The C backend: generated C kernels (codegen), the whole-sequence loop, MKL packed GEMMs, the C ops."""
