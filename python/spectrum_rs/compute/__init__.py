"""Singular values on a device: the worker protocol (:mod:`.base`), the float32 error model
(:mod:`.precision`), which worker runs where (:mod:`.devices`), and the workers themselves
(:mod:`.numpy_worker` on the CPU, :mod:`.torch_worker` on GPUs, with :mod:`.lapack` and
:mod:`.memory` beside them)."""
