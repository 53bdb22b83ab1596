"""The C backend (backend.py): generated C stage kernels (codegen.py), the time loop in C (loop.py),
MKL's products (mkl.py), the ops' C forms (ops.py) and the buffer pool (pool.py)."""
