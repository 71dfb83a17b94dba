"""Code the tests share, and that the benchmarks borrow (benches/oracle.py, benches/models.py):

- ``oracle``: the independent float64 oracle of docs/method.md §1-§3 (layer names and types, SNR
  statistics, per-type selection), the comparisons the tests make with it, and the random
  matrices they feed it;
- ``models``: the one writer of test models (Llama-like tensors, single-file and sharded
  models with their index and ``config.json``, hand-made broken files, the installed real
  model);
- ``safetensors_format``: the safetensors file format written and read by hand, with the
  standard library only;
- ``cli``: the command line run in a subprocess, as a user runs it.

Nothing here is a test or a fixture (fixtures live in tests/conftest.py). Tests import
``from helpers.models import ...``: tests/conftest.py puts tests/ on ``sys.path``. This file
imports nothing, so that ``helpers.safetensors_format`` stays importable without numpy or
torch.
"""
