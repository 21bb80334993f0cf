"""Weight circuits against TransformerLens FactoredMatrix circuits and all_composition_scores."""

from __future__ import annotations

import numpy as np
import pytest
from query_models import tiny_model

from actstore.errors import InvalidParameterError
from actstore.ingest.model_info import config_dict
from actstore.query import circuit_matrix, composition_scores, ov_circuit, qk_circuit, virtual_ov
from actstore.query.readout import Weights


@pytest.fixture(scope="module")
def model():
    return tiny_model("ln_mlp")


@pytest.fixture(scope="module")
def weights(model):
    return Weights(config_dict(model), dict(model.state_dict()))


def np64(x) -> np.ndarray:
    return x.detach().double().numpy()


def test_ov_and_qk_equal_factored_matrices(model, weights):
    for layer, head in [(0, 0), (1, 2), (2, 1)]:
        ov = (model.W_E @ model.OV[layer, head] @ model.W_U).AB
        np.testing.assert_allclose(circuit_matrix(ov_circuit(weights, layer, head)), np64(ov), rtol=1e-5,
                                   atol=1e-5)
        qk = (model.W_E @ model.QK[layer, head] @ model.W_E.T).AB
        np.testing.assert_allclose(circuit_matrix(qk_circuit(weights, layer, head)), np64(qk), rtol=1e-5,
                                   atol=1e-5)
        qk_pos = (model.W_pos @ model.QK[layer, head] @ model.W_pos.T).AB
        np.testing.assert_allclose(circuit_matrix(qk_circuit(weights, layer, head, over="positions")), np64(qk_pos),
                                   rtol=1e-5, atol=1e-5)
    assert circuit_matrix(ov_circuit(weights, 0, 0)).shape == (model.cfg.d_vocab, model.cfg.d_vocab_out)
    sub = circuit_matrix(ov_circuit(weights, 1, 0, tokens=[3, 1], outputs=[0, 5, 7]))
    np.testing.assert_allclose(sub, circuit_matrix(ov_circuit(weights, 1, 0))[np.ix_([3, 1], [0, 5, 7])],
                               rtol=1e-12)
    np.testing.assert_allclose(circuit_matrix(qk_circuit(weights, 1, 0, queries=[2], keys=[4, 5])),
                               circuit_matrix(qk_circuit(weights, 1, 0))[np.ix_([2], [4, 5])], rtol=1e-12)


def test_virtual_ov(model, weights):
    want = (model.W_E @ model.OV[0, 1] @ model.OV[2, 0] @ model.W_U).AB
    np.testing.assert_allclose(circuit_matrix(virtual_ov(weights, (0, 1), (2, 0))), np64(want), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(InvalidParameterError, match="must come before"):
        circuit_matrix(virtual_ov(weights, (1, 0), (1, 1)))


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_equal_transformerlens(model, weights, kind):
    want = np64(model.all_composition_scores(kind))  # [l1, h1, l2, h2], zero unless l1 < l2
    got = composition_scores(weights, kind)
    n, h = model.cfg.n_layers, model.cfg.n_heads
    assert got.height == h * h * n * (n - 1) // 2
    assert got.columns == ["kind", "src", "dst", "src_layer", "src_head", "dst_layer", "dst_head", "value"]
    for row in got.iter_rows(named=True):
        assert row["src"] == f"L{row['src_layer']}H{row['src_head']}"
        w = want[row["src_layer"], row["src_head"], row["dst_layer"], row["dst_head"]]
        assert abs(row["value"] - w) < 1e-5 * max(1.0, abs(w)), row
    assert got.get_column("value").min() > 0


def test_store_source_and_refusals(tiny_store):
    store = tiny_store("ln_mlp")
    model = tiny_model("ln_mlp")
    np.testing.assert_allclose(circuit_matrix(ov_circuit(store, 1, 1)),
                               np64((model.W_E @ model.OV[1, 1] @ model.W_U).AB),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidParameterError, match=r"head must be an integer in \[0, 3\)"):
        circuit_matrix(ov_circuit(store, 0, 3))
    with pytest.raises(InvalidParameterError, match=r"layer must be an integer in \[0, 3\)"):
        circuit_matrix(qk_circuit(store, -1, 0))
    with pytest.raises(InvalidParameterError, match="over must be 'tokens' or 'positions'"):
        circuit_matrix(qk_circuit(store, 0, 0, over="pos"))
    with pytest.raises(InvalidParameterError, match="kind must be one of Q, K, V"):
        composition_scores(store, "O")
    with pytest.raises(InvalidParameterError, match=r"token ids must lie in \[0, 12\)"):
        circuit_matrix(ov_circuit(store, 0, 0, tokens=[12]))
    noln = tiny_store("noln_attn")  # shortformer: W_pos exists (it feeds queries and keys)
    assert circuit_matrix(qk_circuit(noln, 0, 0, over="positions")).shape == (16, 16)
