"""breakdown of attention rows, neuron rows and table files, streamed per chunk / per batch: the same
groups in the same order with the same n as the whole-table breakdown, means and stds to the last
bits of the sums; one-line errors for files that do not fit the store."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from peak_memory import run_script
from polars.testing import assert_frame_equal

from actstore.errors import InvalidParameterError, UnknownColumnError
from actstore.query import streamed
from actstore.query.attention import attention
from actstore.query.breakdown import breakdown
from actstore.query.breakdown_file import breakdown_file
from actstore.query.dla import dla
from actstore.query.neurons import neurons
from actstore.query.summary import GroupSpec, GroupStats

STATS = ("mean", "std", "ci_low", "ci_high")


def matches(got: pl.DataFrame, whole: pl.DataFrame) -> None:
    """`got` has `whole`'s columns, groups (in order) and n exactly; its statistics agree to ~1e-12."""
    assert got.height > 0 and got.columns == whole.columns and got.schema == whole.schema
    keys = [c for c in whole.columns if c not in STATS]
    assert_frame_equal(got.select(keys), whole.select(keys), check_exact=True)
    for col in STATS:
        a, b = got[col].to_numpy(), whole[col].to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b)), col
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13, err_msg=col)


@pytest.fixture(scope="module")
def store(tiny_store):
    return tiny_store("ln_mlp")  # 40 examples in chunks of 16, 16, 8; 3 layers of 64 neurons


@pytest.mark.parametrize("by", [("carry_2",), ("carry_2", "carry_1"), ()])
def test_attention_rows_summarised_per_chunk_match_the_whole_table(store, by):
    whole = breakdown(attention(store), list(by), store)
    got = streamed.summary(store, "attention", None, GroupSpec(by=by))
    matches(got, whole)
    assert got.columns[:len(by) + 4] == [*by, "layer", "head", "q_role", "k_role"]


def test_neuron_rows_summarised_per_chunk_and_layer_match_the_whole_table(store):
    table = neurons(store)
    for value in ("projection", "activation"):
        whole = breakdown(table, "carry_2", store, value=value)
        got = streamed.summary(store, "neurons", None, GroupSpec(by=("carry_2",), value=value))
        matches(got, whole)
    assert got.height == 2 * 3 * 64 and got["layer"].unique().to_list() == [0, 1, 2]
    one = streamed.summary(store, "neurons", {"layers": [1], "pos": "="}, GroupSpec(by=("a",), value="activation"))
    matches(one, breakdown(neurons(store, [1], pos="="), "a", store, value="activation"))
    with pytest.raises(InvalidParameterError, match="not top_k"):
        streamed.summary(store, "neurons", {"top_k": 3}, GroupSpec())
    with pytest.raises(UnknownColumnError, match="no label column 'nosuch'"):
        streamed.summary(store, "attention", None, GroupSpec(by=("nosuch",)))
    with pytest.raises(UnknownColumnError, match="no value column 'value'"):
        streamed.summary(store, "neurons", None, GroupSpec())


def test_attention_only_store_has_no_neuron_rows_to_split(tiny_store):
    with pytest.raises(InvalidParameterError, match="attention-only"):
        streamed.summary(tiny_store("ln_attn"), "neurons", None, GroupSpec(value="projection"))


def test_groups_seen_in_one_part_only_keep_their_statistics_exactly():
    """Folding a neuron table's layers (disjoint groups) keeps each layer's numbers: n * mean / n is not
    always mean (a folded mean is no longer a plain sum / n)."""
    mean = np.random.default_rng(1).normal(size=64)
    n = np.full(64, 7, dtype=np.int64)
    assert (n * mean / n != mean).any()  # the rounding the fold must not apply
    a = GroupStats(pl.DataFrame({"layer": [0] * 64, "neuron": range(64)}), n, mean, mean ** 2)
    b = GroupStats(pl.DataFrame({"layer": [1] * 64, "neuron": range(64)}), n, -mean, mean ** 2)
    both = GroupStats.fold([a, b])
    assert both is not None and both.keys.equals(pl.concat([a.keys, b.keys])) and both.n.tolist() == [7] * 128
    assert both.mean.tolist() == [*mean, *-mean] and both.m2.tolist() == [*mean ** 2, *mean ** 2]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_table_file_read_in_small_batches_matches_the_whole_table(store, tmp_path, fmt):
    table = dla(store, level="head")
    path = tmp_path / f"dla.{fmt}"
    getattr(table, f"write_{fmt}")(path)
    whole = breakdown(table, ["carry_2", "carry_1"], store)
    for batch in (37, 1 << 16):  # 37 rows (CSV: a 1 KiB block) at a time: batches cut through groups
        got = breakdown_file(path, ["carry_2", "carry_1"], store, batch_rows=batch, csv_block_bytes=batch * 28)
        matches(got, whole)
    n_all = breakdown_file(path, [], store)
    matches(n_all, breakdown(table, [], store))
    assert n_all["n"].unique().to_list() == [store.n_examples]


def test_a_table_file_with_its_own_labels_and_a_neuron_table_default_value(store, tmp_path):
    table = neurons(store, [0]).with_columns(odd=pl.col("example_id") % 2 == 1)
    table.write_parquet(tmp_path / "n.parquet")
    got = breakdown_file(tmp_path / "n.parquet", "odd", batch_rows=100)  # no store needed: odd is in the file
    matches(got, breakdown(table, "odd", value="projection"))
    assert got["n"].sum() == table.height


def test_table_files_that_do_not_fit_the_store_are_one_line_errors(store, tmp_path):
    f = tmp_path / "t.parquet"

    def refused(frame: pl.DataFrame, match: str, **kwargs: object) -> None:
        frame.write_parquet(f)
        with pytest.raises((InvalidParameterError, UnknownColumnError), match=match) as err:
            breakdown_file(f, "carry_2", store, batch_rows=2, **kwargs)
        assert "\n" not in str(err.value)

    n = store.n_examples
    refused(pl.DataFrame({"example_id": [0, 1, n], "value": [1.0, 2.0, 3.0]}),
            f"row 2: example_id {n} is not an example of store .* \\(0..{n - 1}\\)")
    refused(pl.DataFrame({"example_id": [0, -1], "value": [1.0, 2.0]}), "row 1: example_id -1")
    refused(pl.DataFrame({"example_id": [0, None], "value": [1.0, 2.0]}), "row 1: example_id is null")
    refused(pl.DataFrame({"example_id": ["0"], "value": [1.0]}), "example_id is String, not an integer")
    refused(pl.DataFrame({"value": [1.0]}), "needs an example_id column")
    refused(pl.DataFrame({"example_id": [0], "value": ["x"]}), "value column 'value' is String, not numeric")
    refused(pl.DataFrame({"example_id": [0], "v": [1.0]}), "no value column 'value'")
    pl.DataFrame({"example_id": [0], "value": [1.0]}).write_parquet(f)
    with pytest.raises(UnknownColumnError, match="no label column 'nosuch'"):
        breakdown_file(f, "nosuch", store)
    with pytest.raises(InvalidParameterError, match="is not a file"):
        breakdown_file(tmp_path / "missing.parquet", "carry_2", store)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidParameterError, match="is not a readable Parquet file"):
        breakdown_file(tmp_path / "bad.parquet", "carry_2", store)
    (tmp_path / "late.csv").write_text("example_id,value\n" + "0,1\n" * 200 + "1,1.5\n")
    with pytest.raises(InvalidParameterError, match="late.csv.*convert it to Parquet"):
        breakdown_file(tmp_path / "late.csv", "carry_2", store, csv_block_bytes=256)


def test_cli_breakdown_of_a_csv_file_and_of_neuron_rows(store, tmp_path, capsys):
    import io

    from actstore.cli import main

    path = tmp_path / "lens.csv"
    assert main(["logit-lens", str(store.path), "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["breakdown", str(store.path), "--group-by", "carry_2", "--input", str(path), "--format", "csv"]) == 0
    got = pl.read_csv(io.StringIO(capsys.readouterr().out))
    assert got.columns[:3] == ["carry_2", "target", "answer_idx"] and "stage" in got.columns
    assert got.filter(pl.col("stage") == "resid_post")["n"].sum() == store.n_examples * store.n_answers
    assert main(["breakdown", str(store.path), "--group-by", "a", "--of", "neurons", "--value", "activation",
                 "--format", "csv"]) == 0
    got = pl.read_csv(io.StringIO(capsys.readouterr().out))
    assert got.height == store.examples["a"].n_unique() * 3 * 64 and got["n"].sum() == 40 * store.n_answers * 3 * 64


MEMORY_SCRIPT = r"""
import actstore
from actstore.query import streamed
from actstore.query.breakdown_file import breakdown_file
from actstore.query.summary import GroupSpec
store = actstore.open_store(sys.argv[1])
store.examples  # the meta table every query reads, before the baseline
base, n = hwm(), {}
n["neurons"] = int(streamed.summary(store, "neurons", None, GroupSpec(by=("carry_2",), value="projection"))["n"].sum())
n["attention"] = int(streamed.summary(store, "attention", None, GroupSpec(by=("carry_2",)))["n"].sum())
n["file"] = int(breakdown_file(sys.argv[2], "carry_2", store)["n"].sum())
print(json.dumps({"added_mb": hwm() - base, "n": n}))
"""


def test_breakdowns_of_neuron_rows_and_of_a_file_hold_a_chunk_not_the_table(tmp_path):
    """2000 examples x 4 answers x 2 layers x 512 neurons: 8.2M neuron rows (~340 MB as a table, +1.2 GB
    to split it whole); the streamed splits of those rows, of the attention rows and of the rows written
    to a Parquet file, one after another, add under half the table (measured ~120 MB: a chunk, a batch, the
    libraries' memory pools)."""
    import warnings

    import torch

    import actstore
    from actstore.query.neurons import neuron_frames
    from actstore.query.tables import write_parquet_frames

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(
            n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=512, n_ctx=16, d_vocab=12, act_fn="relu",
            normalization_type="LN", seed=0, device="cpu"))
    torch.set_num_threads(1)
    n = 2000
    big = actstore.ingest("addition", model, n, 0, tmp_path / "s", hooks=["post", "pattern", "scale"],
                          dtype="float32", chunk=100, batch=250, quiet=True)
    rows = n * big.n_answers * 2 * 512
    assert write_parquet_frames(neuron_frames(big), tmp_path / "n.parquet") == rows
    table_mb = rows * 44 / 2**20  # example_id, pos, layer, neuron (int64), activation (f32), projection (f64)
    got = run_script(MEMORY_SCRIPT, tmp_path / "s", tmp_path / "n.parquet")
    print(f"{rows} neuron rows (~{table_mb:.0f} MB as a table): streamed splits add {got['added_mb']:.0f} MB")
    assert got["n"]["neurons"] == got["n"]["file"] == rows
    assert got["n"]["attention"] > n * big.n_answers  # every layer, head and query row's keys
    assert got["added_mb"] < table_mb / 2
