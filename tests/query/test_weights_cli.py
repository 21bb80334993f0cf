"""`actstore weights ...` through the command line entry point: the same tables as the API, one-line errors."""

from __future__ import annotations


import numpy as np
from helpers import csv_out

from actstore.cli import main
from actstore.query.cosines import cosine_table
from actstore.query.fourier import weight_fourier
from actstore.query.weights import matrix_table, svd_table


def one_line_error(capsys, argv: list[str], *fragments: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"actstore {argv[0]}") and ": error: " in err, err
    for f in fragments:
        assert f in err, err


def test_weights_commands_match_the_api(capsys, tiny_store):
    store = tiny_store("ln_mlp")
    path = str(store.path)
    got = csv_out(capsys, ["weights", "matrix", path, "W_E@OV:0.0>1.2@W_U", "--rows", "0-2,5", "--cols", "1,3"])
    want = matrix_table(store, "W_E@OV:0.0>1.2@W_U", [0, 1, 2, 5], [1, 3])
    assert got.columns == ["token", "output", "token_str", "output_str", "value"]
    assert got["token"].to_list() == want["token"].to_list() and str(got["token_str"][0]) == "0"
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-9)

    got = csv_out(capsys, ["weights", "svd", path, "QK:1.1", "--k", "2", "--values"])
    assert got.columns == ["component", "singular_value"] and got.height == 2
    np.testing.assert_allclose(got["singular_value"], svd_table(store, "QK:1.1", 2, vectors=False)["singular_value"])
    got = csv_out(capsys, ["weights", "svd", path, "OV:2.0", "--k", "1"])
    assert got.height == 2 * 48 and got["side"].unique().sort().to_list() == ["left", "right"]

    got = csv_out(capsys, ["weights", "cosine", path, "W_E@OV:0.0", "W_in:0", "--left-ids", "3,4"])
    np.testing.assert_allclose(got["cosine"], cosine_table(store, "W_E@OV:0.0", "W_in:0", [3, 4])["cosine"],
                               rtol=1e-9)

    got = csv_out(capsys, ["weights", "fourier", path, "W_U", "--ids", "0-9"])
    np.testing.assert_allclose(got["value"], weight_fourier(store, "W_U", ids=range(10))["value"], rtol=1e-9)


def test_weights_bad_input_is_one_line(capsys, tiny_store):
    path = str(tiny_store("ln_mlp").path)
    one_line_error(capsys, ["weights", "matrix", path, "OV:9.0"], "9.0 does not exist")
    one_line_error(capsys, ["weights", "matrix", path, "W_E", "--rows", "a-b"], "--rows expects")
    one_line_error(capsys, ["weights", "cosine", path, "W_E@OV:0.0", "dir:nope"], "no direction named 'nope'")
    one_line_error(capsys, ["weights", "fourier", path, "W_U", "--over", "neuron"], "over='neuron' is not one")
    one_line_error(capsys, ["weights", "svd", path, "OV:0.0", "--k", "0"], "--k")
