"""Weight algebra (query/weights.py, cosines.py, fourier.py) against TransformerLens's FactoredMatrix,
the model's own weights and numpy, as the seeds compute them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from query_models import tiny_model

from actstore.errors import InvalidParameterError
from actstore.ingest.model_info import config_dict
from actstore.query.circuits import circuit_matrix, virtual_ov
from actstore.query.cosines import cosine_table
from actstore.query.fourier import fourier_basis, fourier_table, spectrum_table, weight_fourier
from actstore.query.readout import Weights
from actstore.query.weights import (composition_matrix, matrix_table, ov_matrix, path_ov, qk_matrix, singular_vector,
                                    svd_table, to_matrix, weight_matrix)


@pytest.fixture(scope="module")
def model():
    return tiny_model("ln_mlp")


@pytest.fixture(scope="module")
def weights(model):
    return Weights(config_dict(model), dict(model.state_dict()))


def np64(x) -> np.ndarray:
    x = x.AB if hasattr(x, "AB") else x
    return x.detach().double().numpy()


def close(got, want, tol=1e-5):
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_head_matrices_and_paths_equal_factored_matrices(model, weights):
    m = model
    t = ov_matrix(weights, 1, 2)
    assert t.columns == ["in_dim", "out_dim", "value"] and t.height == 48 * 48
    close(to_matrix(t), np64(m.OV[1, 2]))
    t = qk_matrix(weights, 2, 0)
    assert t.columns == ["q_dim", "k_dim", "value"]
    close(to_matrix(t), np64(m.QK[2, 0]))
    # a virtual OV circuit of length three, embeddings to logits
    t = path_ov(weights, ["0.1", (1, 0), "L2H2"], "W_E", "W_U")
    assert t.columns == ["token", "output", "value"]
    close(to_matrix(t), np64(m.W_E @ m.OV[0, 1] @ m.OV[1, 0] @ m.OV[2, 2] @ m.W_U))
    # length two is the existing virtual_ov
    close(to_matrix(matrix_table(weights, "W_E@OV:0.1>2.0@W_U")), circuit_matrix(virtual_ov(weights, (0, 1), (2, 0))),
          1e-9)
    close(to_matrix(matrix_table(weights, "OV:0.0>1.1")), np64(m.OV[0, 0] @ m.OV[1, 1]))
    close(to_matrix(matrix_table(weights, "W_pos@QK:1.1@W_pos")), np64(m.W_pos @ m.QK[1, 1] @ m.W_pos.T))
    # restricted rows / columns are the same cells
    sub = to_matrix(matrix_table(weights, "W_E@OV:1.0@W_U", rows=[3, 1], cols=[0, 5, 7]))
    close(sub, np64(m.W_E @ m.OV[1, 0] @ m.W_U)[np.ix_([3, 1], [0, 5, 7])])


def test_composition_matrices(model, weights):
    m = model
    # seed 000: W_pos @ W_QK^1.0 @ W_OV^0.0.T @ W_E.T
    t = composition_matrix(weights, "K", "0.0", "1.0", query="W_pos", key="W_E")
    assert t.columns == ["q_pos", "k_token", "value"] and t.height == 16 * 12
    close(to_matrix(t), np64(m.W_pos @ m.QK[1, 0].AB @ m.OV[0, 0].AB.T @ m.W_E.T))
    t = composition_matrix(weights, "Q", (0, 2), (2, 1), query="W_E", key="W_pos")
    close(to_matrix(t), np64(m.W_E @ m.OV[0, 2].AB @ m.QK[2, 1].AB @ m.W_pos.T))
    t = composition_matrix(weights, "V", "0.0", "1.0", key="W_U")
    assert t.columns == ["in_dim", "output", "value"]
    close(to_matrix(t), np64(m.OV[0, 0].AB @ m.OV[1, 0].AB @ m.W_U))
    close(to_matrix(matrix_table(weights, "K:1.2>2.0")), np64(m.QK[2, 0].AB @ m.OV[1, 2].AB.T))
    # the composition score is |matrix| / (|W_OV1| |W_QK2|) on the d_model x d_model matrices
    kmat = to_matrix(matrix_table(weights, "K:0.0>1.0"))
    score = np.linalg.norm(kmat) / np.linalg.norm(np64(m.OV[0, 0])) / np.linalg.norm(np64(m.QK[1, 0]))
    close(score, float(np64(model.all_composition_scores("K"))[0, 0, 1, 0]))


def test_stored_weights_as_they_are(model, weights):
    t = matrix_table(weights, "W_in:1")
    assert t.columns == ["dim", "neuron", "value"]
    close(to_matrix(t), np64(model.W_in[1]), 0)
    close(to_matrix(matrix_table(weights, "W_U", cols=range(10))), np64(model.W_U[:, :10]), 0)
    close(to_matrix(matrix_table(weights, "W_O:2.1")), np64(model.W_O[2, 1]), 0)
    assert matrix_table(weights, "W_E").columns == ["token", "dim", "value"]
    assert matrix_table(weights, "W_Q:0.0").columns == ["dim", "d_head", "value"]


def test_svd_equals_factored_matrix_svd(model, weights):
    fm = model.OV[1, 2]
    u_tl, s_tl, v_tl = (np64(x) for x in fm.svd())
    t = svd_table(weights, "OV:1.2")
    values = svd_table(weights, "OV:1.2", vectors=False)
    assert values.columns == ["component", "singular_value"] and values.height == 16
    close(values["singular_value"].to_numpy(), s_tl)
    assert t.columns == ["component", "singular_value", "side", "axis", "index", "value"]
    u = to_matrix(t.filter(side="left"), "index", "component")
    v = to_matrix(t.filter(side="right"), "index", "component")
    assert u.shape == v.shape == (48, 16)
    # the same vectors up to sign (singular values are distinct), reconstructing the matrix
    close(np.abs(np.sum(u * u_tl, axis=0)), np.ones(16))
    close(np.abs(np.sum(v * v_tl, axis=0)), np.ones(16))
    close(u @ np.diag(s_tl) @ v.T, np64(fm))
    assert (u[np.argmax(np.abs(u), axis=0), np.arange(16)] > 0).all()  # sign convention
    # top k of a product of heads through to the logits, against numpy's dense SVD
    dense = np64(model.W_E @ model.OV[0, 0] @ model.OV[2, 1] @ model.W_U)
    top = svd_table(weights, "W_E@OV:0.0>2.1@W_U", k=2, vectors=False)
    close(top["singular_value"].to_numpy(), np.linalg.svd(dense, compute_uv=False)[:2])
    # a stored weight (seed 003: W_U over the digits); a singular vector as a direction
    s_u = np.linalg.svd(np64(model.W_U[:, :10]), compute_uv=False)
    close(svd_table(weights, "W_U", cols=range(10), vectors=False)["singular_value"].to_numpy(), s_u)
    top_right = singular_vector(weights, "OV:1.2", 0, "right")
    close(np.abs(top_right @ v_tl[:, 0]), 1.0)


def test_cosines_seed_002(model, weights):
    # v_L, v_R: token images under head 0.0's OV; cosines with the neurons' input directions (W_in columns)
    t = cosine_table(weights, "W_E@OV:0.0", "W_in:0", left_ids=[3, 4])
    assert t.columns == ["left", "left_id", "right", "right_id", "cosine"] and t.height == 2 * 64
    v = np64(model.W_E[[3, 4]]) @ np64(model.W_V[0, 0]) @ np64(model.W_O[0, 0])  # [2, d_model], float64
    w_in = np64(model.W_in[0])  # [d_model, d_mlp]
    want = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (w_in / np.linalg.norm(w_in, axis=0))
    close(t["cosine"].to_numpy().reshape(2, 64), want, 1e-9)
    assert t["left_id"].to_list()[:2] == [3, 3] and t["right_id"].to_list()[:2] == [0, 1]
    # named vectors, and the v_L / v_R cosine itself
    pair = cosine_table(weights, {"v_L": v[0]}, {"v_R": v[1], "zero": np.zeros(48)})
    close(pair["cosine"][0], v[0] @ v[1] / np.linalg.norm(v[0]) / np.linalg.norm(v[1]), 1e-9)
    assert pair["left_id"].null_count() == 2 and pair["cosine"][1] is None
    out = cosine_table(weights, "W_out:1", "W_U", left_ids=[0])
    w_out, w_u = np64(model.W_out[1][0]), np64(model.W_U)
    close(out["cosine"].to_numpy(), w_out @ w_u / np.linalg.norm(w_out) / np.linalg.norm(w_u, axis=0), 1e-9)


def seed_fourier_basis(p: int) -> np.ndarray:
    """Seed 003's make_fourier_basis, as written there (in float64)."""
    b = torch.ones(p, p, dtype=torch.float64)
    x = torch.arange(p, dtype=torch.float64)
    if p % 2 == 0:
        for i in range(1, p // 2):
            b[2 * i - 1] = torch.cos(2 * torch.pi * x * i / p)
            b[2 * i] = torch.sin(2 * torch.pi * x * i / p)
        b[-1] = torch.cos(torch.pi * x)
    else:
        for i in range(1, (p // 2) + 1):
            b[2 * i - 1] = torch.cos(2 * torch.pi * x * i / p)
            b[2 * i] = torch.sin(2 * torch.pi * x * i / p)
    return (b / b.norm(dim=1, keepdim=True)).numpy()


def test_fourier_seed_003(model, weights):
    for p in (1, 2, 7, 10):
        basis, names = fourier_basis(p)
        close(basis, seed_fourier_basis(p), 1e-12)
        assert len(names) == p and names[0] == "const"
    assert fourier_basis(10)[1][-3:] == ["cos 4", "sin 4", "cos 5"]
    # W_U over the digits in the Fourier basis: W_U[:, :10] @ fourier_basis.T
    t = weight_fourier(weights, "W_U", ids=range(10))
    assert t.columns == ["dim", "component", "fourier", "frequency", "value"] and t.height == 48 * 10
    close(to_matrix(t, "dim", "component"), np64(model.W_U[:, :10]) @ seed_fourier_basis(10).T, 1e-9)
    assert t.filter(component=2)["fourier"].unique().to_list() == ["sin 1"]
    s = weight_fourier(weights, "W_U", ids=range(10), spectrum=True)
    f = np.fft.rfft(np64(model.W_U[:, :10]), axis=1)
    close(to_matrix(s, "dim", "frequency", "magnitude"), np.abs(f), 1e-9)
    close(to_matrix(s, "dim", "frequency", "phase"), np.angle(f), 1e-9)
    # any tidy table along any column: a per-digit value grouped by a key column, ids reordered
    table = pl.DataFrame({"g": ["a"] * 4 + ["b"] * 4, "digit": [3, 2, 1, 0] * 2, "value": [1.0, 2, 3, 4, 0, 0, 1, 0]})
    got = fourier_table(table, "digit")
    assert got.columns == ["g", "component", "fourier", "frequency", "value"]
    close(got.filter(g="a")["value"].to_numpy(), seed_fourier_basis(4) @ np.array([4.0, 3, 2, 1]), 1e-12)
    spec = spectrum_table(table, "digit", ids=[1, 0, 2, 3])
    close(spec.filter(g="b")["magnitude"].to_numpy(), np.abs(np.fft.rfft([1.0, 0, 0, 0])), 1e-12)


def test_refusals(weights):
    cases = {
        "OV:3.0": r"3.0 does not exist: the model has 3 layers of 3 heads",
        "OV:1.0>0.0": "must be in an earlier layer",
        "QK:0.0>1.0": "QK takes 1 head",
        "K:1.0": "K takes 2 heads",
        "XY:1.0": "unknown matrix 'XY'",
        "W_E@OV:1.0@W_pos": "END 'W_pos' must be one of resid, logits, W_U",
        "W_U@W_E": "START@ / @END go around a product of heads",
        "W_in:7": r"W_in takes a layer in \[0, 3\)",
        "W_E@OV:0.0@W_U@W_U": "expected one matrix",
        "": "matrix spec",
    }
    for spec, message in cases.items():
        with pytest.raises(InvalidParameterError, match=message):
            weight_matrix(weights, spec)
    with pytest.raises(InvalidParameterError, match=r"row ids must lie in \[0, 12\)"):
        matrix_table(weights, "W_E@OV:0.0@W_U", rows=[12])
    with pytest.raises(InvalidParameterError, match="both of its axes"):
        cosine_table(weights, "OV:0.0", "W_in:0")
    with pytest.raises(InvalidParameterError, match="needs a store"):
        cosine_table(weights, "dir:x", "W_in:0")
    with pytest.raises(InvalidParameterError, match="exactly one value for each"):
        fourier_table(pl.DataFrame({"d": [0, 0, 1], "value": [1.0, 2, 3]}), "d")
    with pytest.raises(InvalidParameterError, match="give over="):
        weight_fourier(weights, "W_E@OV:0.0@W_U")
    with pytest.raises(InvalidParameterError, match="composition kind"):
        composition_matrix(weights, "O", "0.0", "1.0")
