"""The float64 eigensolver the CPU worker uses (numpy's LAPACK, two-stage reduction):
the same eigenvalues as ``numpy.linalg.eigvalsh``, found in numpy's own OpenBLAS, and
clear errors for matrices it cannot take."""

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from spectrum_rs.compute import lapack


@pytest.fixture(params=["two-stage", "size-rule"])
def route(request, monkeypatch):
    """``two-stage``: every size through LAPACK's dsyevd_2stage; ``size-rule``: as shipped."""
    if request.param == "two-stage":
        monkeypatch.setattr(lapack, "TWO_STAGE_FROM", 1)
    return request.param


@pytest.mark.parametrize("n", [1, 2, 7, 200, 513])
def test_eigenvalues_match_numpy(n, route):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n + 5, n))
    g = x.T @ x
    want = np.linalg.eigvalsh(g)
    got = lapack.eigvalsh(g.copy())
    assert np.all(np.diff(got) >= 0), "ascending"
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * want[-1])


def test_a_matrix_above_the_two_stage_size():
    n = lapack.TWO_STAGE_FROM + 3
    x = np.random.default_rng(1).standard_normal((n, n // 8))
    g = x @ x.T  # rank n/8: mostly zero eigenvalues
    want = np.linalg.eigvalsh(g)
    np.testing.assert_allclose(lapack.eigvalsh(g.copy()), want, rtol=0, atol=1e-12 * want[-1])


def test_repeated_and_zero_eigenvalues(route):
    g = np.diag([0.0, 0.0, 2.0, 2.0, 5.0])
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 5)))
    a = np.ascontiguousarray(q @ g @ q.T)
    a = (a + a.T) / 2
    np.testing.assert_allclose(lapack.eigvalsh(a), [0, 0, 2, 2, 5], atol=1e-12)
    assert lapack.eigvalsh(np.zeros((0, 0))).shape == (0,)


def test_unusable_input_is_a_clear_error():
    for bad in (np.eye(3, dtype=np.float32), np.eye(3)[:, :2].copy(), np.asfortranarray(np.eye(4)[:, ::2])):
        with pytest.raises(ValueError, match="square, C-contiguous, writable float64"):
            lapack.eigvalsh(bad)
    ro = np.eye(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        lapack.eigvalsh(ro)


def test_numpy_wheels_openblas_gives_the_two_stage_routine():
    prefixes = {lib.get("prefix") for lib in threadpool_info() if lib.get("user_api") == "blas"}
    if "libscipy_openblas" not in prefixes:
        pytest.skip(f"numpy is not built on the scipy-openblas of its wheels here ({prefixes})")
    assert lapack.backend() == "LAPACK dsyevd_2stage"
