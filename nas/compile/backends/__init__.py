"""The backends of the fast path, behind one interface (base.py): torch (torch.py), C (c/), Triton
(triton.py), and CUDA graphs (cudagraphs.py) as a wrapper of the others' programs. policy.py is the
one setting that chooses among them and select.py applies it per call; probe.py checks a backend's
program against the torch program; driver.py, stage_code.py and stages.py are the stage driver the C
and Triton backends share."""
