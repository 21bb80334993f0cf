"""Probes and PCA: the streamed probe equals the same LDA fitted in memory with numpy (same
accuracies, hence the same predictions up to ties), the validation choice of shrinkage equals a
numpy grid search, PCA equals numpy.linalg.svd of the centred rows, and on the addition zoo the
carry into the first sum digit is read off layer 1 at '=' far above chance."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from query_models import tiny_model

from peak_memory import run_script

import actstore
from actstore.errors import InvalidParameterError, UnknownColumnError, UnknownHookError
from actstore.query.pca import pca
from actstore.query.probe_data import holdout_mask
from actstore.query.probes import SHRINKAGES, VALIDATION_FRACTION, probe

N = 300


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same 300 addition examples through one tiny LN + MLP model, chunks of 64 (the last partial):
    'all' stores resid_pre/resid_post and z at every position, 'answer' stores resid_post at the
    answer positions only; 20 examples: 'default' the default hooks (no residual hook), 'bare' only
    attention patterns."""
    model = tiny_model("ln_mlp")
    root = tmp_path_factory.mktemp("probes")
    common = dict(dtype="float32", chunk=64, batch=100, quiet=True, model_spec="tiny")
    full = actstore.ingest("addition", model, N, 3, root / "all", hooks=["resid_pre", "resid_post", "z"], **common)
    answer = actstore.ingest("addition", model, N, 3, root / "answer", hooks=["resid_post:answer"], **common)
    default = actstore.ingest("addition", model, 20, 3, root / "default", **common)
    bare = actstore.ingest("addition", model, 20, 3, root / "bare", hooks=["pattern"], **common)
    return {"all": full, "answer": answer, "default": default, "bare": bare}


# --- an independent in-memory reference -------------------------------------------------------

def rows_at(store, hook: str, pos) -> tuple[np.ndarray, np.ndarray]:
    """(example ids, features [row, F] float64) of `hook` at `pos`, from the whole array in memory."""
    arr = store.read(hook).astype(np.float64)  # [example, pos, ...]
    ex = store.examples
    lengths = ex["length"].to_numpy()
    if isinstance(pos, int):
        at = pos + lengths if pos < 0 else np.full(lengths.size, pos)
    elif pos.startswith("answer:"):
        at = np.array([a[int(pos[7:])] for a in ex["answer_positions"].to_list()])
    else:  # a role, from the tokens table
        t = store.tokens.filter(pl.col("role") == pos).sort("example_id")
        at = np.full(lengths.size, -1)
        at[t["example_id"].to_numpy()] = t["pos"].to_numpy()
    ids = np.flatnonzero((at >= 0) & (at < lengths))
    return ids, arr[ids, at[ids]].reshape(ids.size, -1)


def lda_numpy(x: np.ndarray, y: np.ndarray, shrinkage: float):
    """sklearn's LinearDiscriminantAnalysis(solver='lsqr', shrinkage=a), written out: per-class
    empirical covariances averaged by the class priors, each shrunk, solved by least squares."""
    classes = np.unique(y)
    d = x.shape[1]
    priors = np.array([(y == c).mean() for c in classes])
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    cov = np.zeros((d, d))
    for p, c in zip(priors, classes):
        xc = x[y == c] - x[y == c].mean(axis=0)
        s = xc.T @ xc / len(xc)
        cov += p * ((1 - shrinkage) * s + shrinkage * np.trace(s) / d * np.eye(d))
    coef = np.linalg.lstsq(cov, means.T, rcond=None)[0].T
    intercept = -0.5 * np.diag(means @ coef.T) + np.log(priors)
    return lambda z: classes[np.argmax(z @ coef.T + intercept, axis=1)]


def reference(store, hook, pos, y_all, shrinkage, test_fraction=0.2, seed=0):
    """train_acc, test_acc, n_train, n_test, baseline of the in-memory probe (rows with a label only)."""
    ids, x = rows_at(store, hook, pos)
    y = y_all[ids]
    ok = y >= 0
    ids, x, y = ids[ok], x[ok], y[ok]
    test = holdout_mask(ids, test_fraction, seed)
    predict = lda_numpy(x[~test], y[~test], shrinkage)
    right = predict(x) == y
    majority = np.bincount(y[~test]).argmax()
    return (right[~test].mean(), right[test].mean(), int((~test).sum()), int(test.sum()),
            float((y[test] == majority).mean()))


def codes(series: pl.Series) -> np.ndarray:
    """Class codes of a label column (sorted distinct values; -1 for null)."""
    values = sorted(series.drop_nulls().unique().to_list())
    return np.array([values.index(v) if v is not None else -1 for v in series.to_list()])


# --- probes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shrinkage", [0.0, 0.05])
def test_streamed_probe_equals_in_memory_lda(stores, shrinkage):
    store = stores["all"]
    ex = store.examples
    total = ex["sum"].to_numpy()
    edges = np.quantile(total, [1 / 3, 2 / 3])
    labels = {"carry_0": codes(ex["carry_0"]), "twin_operand": codes(ex["twin_operand"]),
              "carry_1": codes(ex["carry_1"])}
    hooks = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z"]
    positions = ["=", -1, 2, "answer:1"]
    got = probe(store, list(labels), hooks=hooks, pos=positions, shrinkage=shrinkage)
    assert got.columns[:7] == ["hook", "layer", "pos", "label", "train_acc", "test_acc", "n"]
    assert got.height == len(hooks) * len(positions) * len(labels)
    assert got["shrinkage"].unique().to_list() == [shrinkage]
    for row in got.iter_rows(named=True):
        pos = int(row["pos"]) if row["pos"].lstrip("-").isdigit() else row["pos"]
        want = reference(store, row["hook"], pos, labels[row["label"]], shrinkage)
        got_row = (row["train_acc"], row["test_acc"], row["n_train"], row["n_test"], row["baseline"])
        if got_row != want and shrinkage == 0.0:
            # unshrunk LDA on a near-singular covariance: which tiny eigenvalues count as zero differs
            # between an eigendecomposition and numpy's SVD cutoff, so a few borderline rows may flip
            ids, x = rows_at(store, row["hook"], pos)
            assert np.linalg.cond(np.cov(x.T)) > 1e6, row
            assert got_row[2:] == want[2:], row
            assert abs(got_row[0] - want[0]) * got_row[2] <= 3 and abs(got_row[1] - want[1]) * got_row[3] <= 3, row
            continue
        assert got_row == want, row
        assert row["n"] == N and row["layer"] == int(row["hook"].split(".")[1]) and row["n_classes"] == 2
    # a numeric label cut into quantile bins: three classes
    binned = probe(store, "sum", hooks=hooks[0], pos="=", bins=3, shrinkage=shrinkage).row(0, named=True)
    want = reference(store, hooks[0], "=", np.searchsorted(edges, total, side="right"), shrinkage)
    assert (binned["train_acc"], binned["test_acc"], binned["n_train"], binned["n_test"], binned["baseline"]) == want
    assert binned["n_classes"] == 3


def test_shrinkage_chosen_on_validation_equals_numpy_grid_search(stores):
    store = stores["all"]
    hook, y_all = "blocks.0.hook_resid_post", codes(store.examples["carry_0"])
    got = probe(store, "carry_0", hooks=hook, pos="=", seed=5).row(0, named=True)
    ids, x = rows_at(store, hook, "=")
    y = y_all[ids]
    train = ~holdout_mask(ids, 0.2, 5)
    val = holdout_mask(ids, VALIDATION_FRACTION, 5, "validation") & train
    fit = train & ~val
    scores = [(lda_numpy(x[fit], y[fit], a)(x[val]) == y[val]).sum() for a in SHRINKAGES]
    best = max(j for j, s in enumerate(scores) if s == max(scores))  # the strongest among the best
    assert got["shrinkage"] == SHRINKAGES[best]
    assert (got["train_acc"], got["test_acc"]) == reference(store, hook, "=", y_all, SHRINKAGES[best], seed=5)[:2]


def test_holdout_split_is_deterministic_disjoint_and_per_example():
    ids = np.arange(20000)
    test = holdout_mask(ids, 0.25, 7)
    assert abs(test.mean() - 0.25) < 0.015
    np.testing.assert_array_equal(holdout_mask(ids[5000:6000], 0.25, 7), test[5000:6000])  # chunking-free
    np.testing.assert_array_equal(holdout_mask(ids, 0.25, 7), test)
    other = holdout_mask(ids, 0.25, 8)
    assert abs((test & other).mean() - 0.25 ** 2) < 0.01  # another seed: an independent split
    val = holdout_mask(ids, 0.25, 7, "validation")
    assert abs((test & val).mean() - 0.25 ** 2) < 0.01


def test_answer_only_hook_reads_the_same_values(stores):
    # the same hook stored at every position and at the answer positions only: the same probes
    kw = dict(hooks="blocks.1.hook_resid_post", pos=["answer:1", "c0", "answer:3"], shrinkage=0.01)
    a = probe(stores["all"], ["carry_0", "carry_1"], **kw)
    b = probe(stores["answer"], ["carry_0", "carry_1"], **kw)
    assert a.equals(b)
    assert a.filter(pl.col("pos") == "c0").drop("pos").equals(a.filter(pl.col("pos") == "answer:1").drop("pos"))
    with pytest.raises(InvalidParameterError, match="answer positions only.*'answer:J'"):
        probe(stores["answer"], "carry_0", hooks="resid_post", pos="c3")  # c3 is the last token: no answer is read


def test_default_hooks_and_their_fallbacks(stores):
    all_hooks = probe(stores["all"], "carry_0", shrinkage=0.1)["hook"].to_list()
    assert all_hooks == [f"blocks.{i}.hook_resid_{s}" for i in range(3) for s in ("pre", "post")]
    z_only = probe(stores["default"], "carry_0", shrinkage=0.1)["hook"].to_list()
    assert z_only == [f"blocks.{i}.attn.hook_z" for i in range(3)]  # the default ingest stores no residual hook
    assert probe(stores["all"], "carry_0", hooks="z", shrinkage=0.1)["hook"].to_list() == [
        f"blocks.{i}.attn.hook_z" for i in range(3)]
    with pytest.raises(UnknownHookError, match="no residual hook.*stored: blocks.0.attn.hook_pattern"):
        probe(stores["bare"], "carry_0")


def test_variable_lengths_and_roles(tiny_store):
    store = tiny_store("bidir")  # brackets: right-padded examples of different lengths
    y = codes(store.examples["balanced"])
    got = probe(store, "balanced", hooks="blocks.2.hook_resid_post", pos=[-1, 30], shrinkage=0.2)
    lengths = store.examples["length"].to_numpy()
    for row in got.iter_rows(named=True):
        want = reference(store, row["hook"], int(row["pos"]), y, 0.2)
        assert (row["train_acc"], row["test_acc"], row["n_train"], row["n_test"]) == want[:4]
    assert got["n"].to_list() == [store.n_examples, int((lengths > 30).sum())]  # short examples have no pos 30
    with pytest.raises(InvalidParameterError, match="role 'open' occurs .* times in example"):
        probe(store, "balanced", pos="open")


def test_bad_input_is_one_clear_error(stores):
    store = stores["all"]
    cases = [
        (dict(label="nope"), UnknownColumnError, "'nope' is not a label"),
        (dict(label="sum"), InvalidParameterError, "distinct values.*bins=N"),
        (dict(label="split"), InvalidParameterError, "needs two classes"),
        (dict(label=["carry_0", "twin_operand"], bins=3), InvalidParameterError, "bins cuts numeric labels"),
        (dict(label="carry_0", pos=99), InvalidParameterError, "outside the store's 14 positions"),
        (dict(label="carry_0", pos="answer:9"), InvalidParameterError, "answers 0..3"),
        (dict(label="carry_0", pos="zz"), InvalidParameterError, "no token has role 'zz'"),
        (dict(label="carry_0", hooks="resid_mid"), UnknownHookError, "not stored"),
        (dict(label="carry_0", test_fraction=1.0), InvalidParameterError, "strictly between 0 and 1"),
        (dict(label="carry_0", shrinkage=2), InvalidParameterError, "shrinkage must be"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            probe(store, **kwargs)


# --- PCA --------------------------------------------------------------------------------------

@pytest.mark.parametrize("hook,pos", [("blocks.2.hook_resid_post", "="), ("blocks.1.attn.hook_z", -2)])
def test_pca_equals_svd_of_the_centred_rows(stores, hook, pos):
    store = stores["all"]
    result = pca(store, hook, pos, k=4, color=["carry_0", "sum"], where={"carry_2": [False]})
    ids, x = rows_at(store, hook, pos)
    keep = ~store.examples["carry_2"].to_numpy()[ids]
    ids, x = ids[keep], x[keep]
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s ** 2 / (len(x) - 1)
    np.testing.assert_allclose(result.variance["variance"], var[:4], rtol=1e-9)
    np.testing.assert_allclose(result.variance["ratio"], var[:4] / var.sum(), rtol=1e-9)
    np.testing.assert_allclose(result.variance["cumulative"], np.cumsum(var[:4]) / var.sum(), rtol=1e-9)
    assert result.scores["example_id"].to_list() == ids.tolist()
    for j in range(4):
        got = result.scores[f"pc{j + 1}"].to_numpy()
        want = xc @ vt[j]
        sign = np.sign(got @ want)
        np.testing.assert_allclose(got, sign * want, rtol=1e-7, atol=1e-9 * np.abs(want).max())
        np.testing.assert_allclose(np.abs(result.components[j]), np.abs(vt[j]), atol=1e-8)
    assert result.scores["carry_0"].to_list() == store.examples["carry_0"].gather(ids).to_list()
    assert result.scores.columns == ["example_id", "pc1", "pc2", "pc3", "pc4", "carry_0", "sum"]
    assert result.pos == str(pos)


def test_pca_defaults_and_errors(stores):
    store = stores["all"]
    result = pca(store)
    assert (result.hook, result.pos) == ("blocks.2.hook_resid_post", "answer:0")
    assert result.scores.columns == ["example_id", "pc1", "pc2"] and result.scores.height == N
    with pytest.raises(InvalidParameterError, match="one position"):
        pca(store, pos=["=", 1])
    with pytest.raises(InvalidParameterError, match="reads one hook; 'resid_post' names 3"):
        pca(store, "resid_post")
    with pytest.raises(InvalidParameterError, match="components in 1..48"):
        pca(store, k=49)
    with pytest.raises(UnknownColumnError, match="'nope' is not a label"):
        pca(store, color="nope")


# --- the addition zoo -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return actstore.ingest("addition", "zoo:addition", 800, 11, tmp_path_factory.mktemp("zoo") / "s",
                           hooks=["z", "resid_pre", "resid_post"], dtype="float32", chunk=128, quiet=True)


def test_zoo_reads_the_carry_off_layer_1(zoo):
    table = probe(zoo, ["carry_0", "carry_1"], hooks=["resid_pre", "resid_post", "z"], pos="=")
    acc = {(r["hook"], r["label"]): r for r in table.iter_rows(named=True)}
    for hook in ("blocks.1.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"):
        row = acc[hook, "carry_0"]  # the carry into the first sum digit, predicted at '='
        assert row["test_acc"] > 0.95 and row["baseline"] < 0.6, row
    # before any attention layer the '=' position holds only its token and position: nothing to read
    first = acc["blocks.0.hook_resid_pre", "carry_0"]
    assert first["test_acc"] == first["baseline"]
    # layer 0's output already holds carry_1 (into the second digit) well above chance
    assert acc["blocks.1.hook_resid_pre", "carry_1"]["test_acc"] > 0.8
    # and the first principal component of layer 0's output at '=' splits carry_0
    result = pca(zoo, "blocks.0.hook_resid_post", "=", color="carry_0")
    means = result.scores.group_by("carry_0").agg(pl.col("pc1").mean()).sort("carry_0")["pc1"].to_numpy()
    assert abs(means[1] - means[0]) > 1.5 * result.scores["pc1"].std()


# --- beyond memory ----------------------------------------------------------------------------

MEMORY_SCRIPT = r"""
import numpy as np, polars as pl, zarr
import actstore
from actstore.query.pca import pca
from actstore.query.probes import probe
store = actstore.open_store(sys.argv[1])
store.examples, store.tokens
base = hwm()
table = probe(store, ["carry_0", "carry_1"], pos=["=", "c0"])
result = pca(store, pos="=", k=3)
print(json.dumps({"base_mb": base, "peak_mb": hwm(), "rows": table.height, "pca_rows": result.scores.height}))
"""


@pytest.mark.slow
def test_probe_and_pca_over_a_store_larger_than_the_cap(tmp_path):
    """The residual stream of 16384 examples (d_model 512, float32, every position: 440 MB per hook, 880 MB
    in all) is probed and PCA'd by a subprocess that may add at most CAP_MB to its resident memory."""
    import warnings

    import torch

    cap_mb, n = 160, 16384
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(
            n_layers=1, n_heads=4, d_model=512, d_head=32, n_ctx=16, d_vocab=12, attn_only=True,
            normalization_type="LN", seed=0, device="cpu"))
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    torch.set_num_threads(1)
    store = actstore.ingest("addition", model, n, 0, tmp_path / "big", hooks=["resid_pre", "resid_post"],
                            dtype="float32", chunk=256, batch=512, quiet=True)
    size_mb = sum(store.hook_info(h).example_bytes for h in store.hooks) * n / 2**20
    assert size_mb > 5 * cap_mb, size_mb
    got = run_script(MEMORY_SCRIPT, tmp_path / "big", timeout=900)
    added = got["peak_mb"] - got["base_mb"]
    print(f"store {size_mb:.0f} MB, imports {got['base_mb']:.0f} MB, probe + pca add {added:.0f} MB (cap {cap_mb})")
    assert got["rows"] == 2 * 2 * 2 and got["pca_rows"] == n
    assert added < cap_mb
