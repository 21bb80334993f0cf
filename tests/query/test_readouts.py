"""DLA and logit lens toward any target (token, token list, weight expression, vector, saved direction) at any
stored position, against TransformerLens run_with_cache on the same examples: the full residual decomposition
and the accumulated residual projected on the same direction; the expression parser against numpy; the derived
cache keys; the command line."""

from __future__ import annotations

import io
import shutil

import numpy as np
import polars as pl
import pytest
from query_models import N_EXAMPLES, run_batch, task_data, tiny_model

import actstore
from actstore.cli import main
from actstore.errors import InvalidParameterError, UnknownHookError
from actstore.query import derived, dla, logit_lens
from actstore.query.weight_expr import parse_expression
from actstore.store.directions import save_direction

TOL = dict(rtol=1e-5, atol=1e-4)  # float32 store vs float32 TransformerLens

# per model: a position that is not an answer position, a token list, an expression
CASES = {
    "ln_mlp": ("b0", list(range(10)), "W_U[:,7] - W_U[:,3]"),  # addition: the seed 003 digits
    "noln_attn": ("idx", [0, 5, 17], "W_U[:, 5] - 0.5 * W_U[:, 1]"),  # list_update, no LayerNorm, shortformer
    "bidir": (-1, [0, 1], "W_U[:,1]-W_U[:,0]"),  # brackets: the last real token of right-padded examples
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tiny_store):
    kind = request.param
    store = tiny_store(kind)
    b = run_batch(tiny_model(kind), task_data(kind, N_EXAMPLES, seed=3))  # the store's examples (conftest)
    pos, tokens, expr = CASES[kind]
    if isinstance(pos, str):
        at = np.array([list(row).index(pos) for row in b.data.roles])
    else:
        at = b.data.lengths + pos
    assert not (b.data.answer_pos == at[:, None]).any()  # really not an answer position
    return kind, store, b, pos, at, tokens, expr


def tl_components(b, at: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """[component, example, d_model] TransformerLens's full residual decomposition at position at[e], through
    the cached final LayerNorm scale where the model has one."""
    norm = b.model.cfg.normalization_type is not None
    stack, labels = b.cache.get_full_resid_decomposition(expand_neurons=False, apply_ln=norm, pos_slice=None,
                                                         return_labels=True)
    stack = stack.detach().double().numpy()
    return stack[:, np.arange(stack.shape[1]), at], labels


def w_u(b) -> np.ndarray:
    return b.model.W_U.detach().double().numpy()


def by_component(table: pl.DataFrame, name: str, n_tokens: int) -> np.ndarray:
    """[example, token] values of one component."""
    part = table.filter(pl.col("component") == name).sort("example_id", "token")
    return part["value"].to_numpy().reshape(-1, n_tokens)


def test_token_list_dla_at_a_non_answer_position_equals_transformerlens(case):
    kind, store, b, pos, at, tokens, _ = case
    table = dla(store, "head", target=tokens, pos=pos)
    assert table.columns == ["example_id", "pos", "role", "target", "token", "component", "layer", "head", "value"]
    n_comp = table["component"].n_unique()
    assert table.height == N_EXAMPLES * len(tokens) * n_comp
    first = table.filter(pl.col("component") == "embed").sort("example_id", "token")
    np.testing.assert_array_equal(first["pos"].to_numpy().reshape(-1, len(tokens))[:, 0], at)
    assert first["token"].to_list() == tokens * N_EXAMPLES and set(first["target"]) == {"token"}
    want_role = [b.data.roles[e][p] for e, p in enumerate(at)]
    assert first["role"].to_list()[:: len(tokens)] == want_role
    stack, labels = tl_components(b, at)
    directions = w_u(b)[:, tokens]  # [d_model, token]
    heads = [lab for lab in labels if lab.startswith("L")]
    assert heads and set(heads) <= set(table["component"])
    for name in [*heads, "embed"]:
        want = stack[labels.index(name)] @ directions  # [example, token]
        np.testing.assert_allclose(by_component(table, name, len(tokens)), want, **TOL, err_msg=f"{kind} {name}")
    # every component together: the logit of each token there, minus b_U
    total = table.group_by("example_id", "token").agg(pl.col("value").sum()).sort("example_id", "token")
    want = b.logits[np.arange(N_EXAMPLES), at][:, tokens] - b.model.b_U.detach().double().numpy()[tokens]
    np.testing.assert_allclose(total["value"].to_numpy().reshape(-1, len(tokens)), want, **TOL)
    # the neuron and path levels read the same token directions there
    if kind == "ln_mlp":
        for level in ("neuron", "path"):
            sums = dla(store, level, target=tokens[:3], pos=pos).group_by("example_id", "token").agg(
                pl.col("value").sum()).sort("example_id", "token")
            np.testing.assert_allclose(sums["value"].to_numpy().reshape(-1, 3), want[:, :3], **TOL, err_msg=level)


def test_expression_dla_and_logit_lens_at_a_non_answer_position_equal_transformerlens(case):
    kind, store, b, pos, at, _, expr = case
    direction = parse_expression(expr, lambda name: b.weights.param(name))
    if kind == "ln_mlp":
        np.testing.assert_array_equal(direction, w_u(b)[:, 7] - w_u(b)[:, 3])
    table = dla(store, "head", target=expr, pos=pos)
    assert set(table["target"]) == {expr.strip()} and "token" not in table.columns
    stack, labels = tl_components(b, at)
    for name in [lab for lab in labels if lab.startswith("L")]:
        got = table.filter(pl.col("component") == name).sort("example_id")["value"].to_numpy()
        np.testing.assert_allclose(got, stack[labels.index(name)] @ direction, **TOL, err_msg=f"{kind} {name}")

    lens = logit_lens(store, target=expr, pos=pos)
    norm = b.model.cfg.normalization_type is not None
    acc = b.cache.accumulated_resid(layer=-1, incl_mid=not b.model.cfg.attn_only, apply_ln=False, pos_slice=None)
    if norm:
        acc = b.cache.apply_ln_to_stack(acc, layer=None, pos_slice=None)  # the full stream's final scale
    acc = acc.detach().double().numpy()[:, np.arange(N_EXAMPLES), at]  # [stage, example, d_model]
    got = lens.sort("example_id")["value"].to_numpy().reshape(N_EXAMPLES, -1).T
    np.testing.assert_allclose(got, acc @ direction, **TOL)
    recomputed = logit_lens(store, target=expr, pos=pos, ln="recompute")
    acc = b.cache.accumulated_resid(layer=-1, incl_mid=not b.model.cfg.attn_only, apply_ln=True, pos_slice=None)
    acc = acc.detach().double().numpy()[:, np.arange(N_EXAMPLES), at]
    got = recomputed.sort("example_id")["value"].to_numpy().reshape(N_EXAMPLES, -1).T
    np.testing.assert_allclose(got, acc @ direction, **TOL)


def test_vectors_as_they_are_and_after_the_final_layernorm(case, tmp_path):
    kind, store, b, pos, at, _, expr = case
    v = np.random.default_rng(0).normal(size=b.model.cfg.d_model)
    path = tmp_path / "v.npy"
    np.save(path, v)
    raw = dla(store, "layer", target=str(path), pos=pos)
    assert set(raw["target"]) == {str(path)}
    # as it is: components . v, summing to the final residual stream . v (no LayerNorm scale)
    final = b.cache[f"blocks.{b.model.cfg.n_layers - 1}.hook_resid_post"].detach().double().numpy()
    sums = raw.group_by("example_id").agg(pl.col("value").sum()).sort("example_id")["value"].to_numpy()
    np.testing.assert_allclose(sums, final[np.arange(N_EXAMPLES), at] @ v, **TOL)
    lens = logit_lens(store, target=v, pos=pos)
    assert set(lens["target"]) == {"vector"}
    acc = b.cache.accumulated_resid(layer=-1, incl_mid=not b.model.cfg.attn_only, pos_slice=None)
    acc = acc.detach().double().numpy()[:, np.arange(N_EXAMPLES), at]
    np.testing.assert_allclose(lens.sort("example_id")["value"].to_numpy().reshape(N_EXAMPLES, -1).T, acc @ v, **TOL)
    # after the final LayerNorm (a file of the expression's vector, read with final_ln) = the expression itself
    np.save(path, parse_expression(expr, lambda name: b.weights.param(name)))
    a = dla(store, "layer", target=str(path), pos=pos, final_ln=True)
    e = dla(store, "layer", target=expr, pos=pos)
    np.testing.assert_allclose(a["value"], e["value"], rtol=1e-12, atol=1e-12)


def test_token_and_expression_targets_agree_with_each_other_at_the_answers(tiny_store):
    store = tiny_store("ln_mlp")
    seven = dla(store, "head", target=7)
    assert seven.columns == ["example_id", "answer_idx", "answer_pos", "target", "token", "component", "layer",
                             "head", "value"]
    three = dla(store, "head", target="3")
    both = dla(store, "head", target=[7, 3])
    diff = dla(store, "head", target="W_U[:, 7] - W_U[:, 3]")
    np.testing.assert_allclose(diff["value"], seven["value"].to_numpy() - three["value"].to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(both.filter(pl.col("token") == 3)["value"], three["value"], rtol=0, atol=1e-6)
    # 'correct' at a position that is answer 0's equals the answer table's answer 0
    at_eq = dla(store, "head", pos="=")
    answers = dla(store, "head").filter(pl.col("answer_idx") == 0)
    assert (at_eq["pos"] == answers["answer_pos"]).all()
    np.testing.assert_allclose(at_eq["value"], answers["value"], rtol=0, atol=1e-6)
    diff1 = dla(store, "layer", target="diff", pos="c0", answer=1)  # answer 1 is read at c0
    want = dla(store, "layer", target="diff").filter(pl.col("answer_idx") == 1)
    np.testing.assert_allclose(diff1["value"], want["value"], rtol=0, atol=1e-6)


def test_dla_over_every_digit_in_the_fourier_basis(tiny_store):
    """seed 003: per-head DLA over the digits 0..9, then its Fourier view (query/fourier.py) along `token`."""
    from actstore.query.fourier import fourier_basis, fourier_table

    store = tiny_store("ln_mlp")
    digits = dla(store, "head", target=range(10), pos="b0").filter(pl.col("component") == "L1H2")
    view = fourier_table(digits.drop("component"), over="token")  # its own 'component' is the Fourier one
    basis, names = fourier_basis(10)
    by_example = digits.sort("example_id", "token")["value"].to_numpy().reshape(N_EXAMPLES, 10)
    got = view.sort("example_id", "component")
    assert got["fourier"].to_list()[:10] == names
    np.testing.assert_allclose(got["value"].to_numpy().reshape(N_EXAMPLES, 10), by_example @ basis.T, atol=1e-12)


def test_position_selectors(tiny_store):
    store = tiny_store("bidir")
    tokens = store.tokens
    every = logit_lens(store, target=1, pos="all")
    n_stages = every.filter(pl.col("example_id") == 0, pl.col("pos") == 0).height
    assert every.height == tokens.height * n_stages  # every real token of every example, no padding
    keys = every.select("example_id", "pos", "role").unique().sort("example_id", "pos")
    assert keys.equals(tokens.select("example_id", "pos", "role").sort("example_id", "pos"))
    opens = dla(store, "layer", target=[0, 1], pos=["open", 0])  # a role with many positions, and position 0
    want = tokens.filter((pl.col("role") == "open") | (pl.col("pos") == 0)).select("example_id", "pos")
    got = opens.select("example_id", "pos").unique(maintain_order=True)
    assert got.equals(want.sort("example_id", "pos"))


def test_refusals_are_one_line(tiny_store, tmp_path):
    store = tiny_store("ln_mlp")
    bad = {
        "W_U[:,12]": "W_U has 12 columns",
        "W_U[:,1] * W_U[:,2]": "cannot multiply two vectors",
        "W_U[:,1] + 2": "cannot add a number and a vector",
        "__import__('os').system('x')": "is not 'correct', 'diff'",
        "W_U.T[0]": "unexpected character '.'",
        "W_E[1] / W_E[2]": "cannot divide by a vector",
        "2 * (W_pos[1]": "it ends where ')' was expected",
        "W_U[:,-1]": "non-negative integer index",
        "W_X[0]": "is not 'correct', 'diff'",
        "W_E[0] @ W_U": "unexpected character '@'",
        "-" * 40 + "W_E[0]": "nested more than 32 deep",
        "3 * 4": "is not 'correct', 'diff'",
        "0,1,1": "token 1 is listed twice",
        "0,x": "integer ids separated by commas",
        "12": "outside the model's 12 output tokens",
    }
    for target, says in bad.items():
        with pytest.raises(InvalidParameterError) as e:
            dla(store, target=target)
        assert says in str(e.value) and "\n" not in str(e.value), (target, str(e.value))
    for kwargs, says in [(dict(target=[]), "empty list"), (dict(target=[1.5]), "token ids (ints)"),
                         (dict(target=3, final_ln=False), "always reads the final LayerNorm"),
                         (dict(target=np.ones(5)), "expected a numeric vector of shape (48,)"),
                         (dict(pos="nosuch"), "no token has role 'nosuch'"), (dict(pos=99), "outside the store's"),
                         (dict(pos=[]), "empty list"), (dict(answer=1), "answer= chooses"),
                         (dict(pos="b0", answer=4), "answer index in [0, 4)")]:
        with pytest.raises(InvalidParameterError, match=None) as e:
            logit_lens(store, **kwargs)
        assert says in str(e.value), (kwargs, str(e.value))
    with pytest.raises(InvalidParameterError, match="target 'diff' needs counterfactual tokens"):
        dla(tiny_store("ln_mlp", counter=False), target="diff", pos="b0")
    # hooks stored at the answer positions only: other positions cannot be read
    answers_only = actstore.ingest("addition", tiny_model("ln_mlp"), 8, 0, tmp_path / "ans", positions="answer",
                                   chunk=8, quiet=True)
    assert dla(answers_only, target=[1, 2]).height > 0
    with pytest.raises(InvalidParameterError, match="at every position, but store .* answer positions only"):
        dla(answers_only, target=[1, 2], pos="b0")
    with pytest.raises(UnknownHookError, match="needs hook"):
        logit_lens(actstore.ingest("addition", tiny_model("ln_mlp"), 8, 0, tmp_path / "z", hooks=["z"], chunk=8,
                                   quiet=True), pos="b0")


def test_expressions_equal_numpy():
    rng = np.random.default_rng(1)
    weights = {"unembed.W_U": rng.normal(size=(6, 9)), "embed.W_E": rng.normal(size=(11, 6)),
               "pos_embed.W_pos": rng.normal(size=(5, 6))}
    u, e, p = weights["unembed.W_U"], weights["embed.W_E"], weights["pos_embed.W_pos"]
    cases = {
        "W_U[:,7]-W_U[:,3]": u[:, 7] - u[:, 3],
        " 0.5 * ( W_E[3] + W_E[4, :] ) ": 0.5 * (e[3] + e[4]),
        "-W_U[:,1] + 2e-1*W_pos[4]/4": -u[:, 1] + 0.2 * p[4] / 4,
        "W_U[:,0] - (W_U[:,1] - W_U[:,2]) * -3": u[:, 0] - (u[:, 1] - u[:, 2]) * -3,
        "+(W_E[10])": e[10],
    }
    for text, want in cases.items():
        np.testing.assert_allclose(parse_expression(text, weights.__getitem__), want, rtol=1e-15, err_msg=text)


def test_derived_cache_keys(tiny_store, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(tiny_store("ln_mlp").path, path)
    shutil.rmtree(path / "derived", ignore_errors=True)  # what other tests cached in the shared store
    store = actstore.open_store(path)
    derived.cached(store, "dla", {})
    derived.cached(store, "dla", {"target": "correct", "pos": None, "answer": 0, "final_ln": None})
    derived.cached(store, "dla", {"target": [0, 1, 2], "pos": "b0"})
    again = derived.cached(store, "dla", {"target": "0,1,2", "pos": "b0", "answer": 0})
    stems = sorted(p.name.split("-n=")[0] for p in (path / "derived").glob("dla-*.parquet"))
    assert stems == ["dla-level=head-pos=b0-target=0_1_2", "dla-level=head-target=correct"]
    assert again.equals(dla(store, target=[0, 1, 2], pos="b0"))
    via_sql = store.sql("SELECT * FROM dla ORDER BY ALL", params={"dla": {"target": [0, 1, 2], "pos": "b0"}}).pl()
    assert via_sql.equals(again.sort(pl.all()))
    # a saved direction is keyed by its vector: saved again with other values, it is another table
    d = store.arch.d_model
    save_direction(path, "probe", np.ones(d))
    first = derived.cached(store, "logit_lens", {"target": "probe"})
    save_direction(path, "probe", np.arange(d, dtype=float), overwrite=True)
    second = derived.cached(store, "logit_lens", {"target": "probe"})
    assert not np.allclose(first["value"], second["value"])
    assert second.equals(logit_lens(store, target="name:probe").with_columns(pl.lit("probe").alias("target")))


def test_command_line(tiny_store, tmp_path, capsys):
    path = tmp_path / "s"
    shutil.copytree(tiny_store("ln_mlp").path, path)
    store = actstore.open_store(path)

    def csv(argv: list[str]) -> pl.DataFrame:
        assert main(argv) == 0, capsys.readouterr().err
        return pl.read_csv(io.StringIO(capsys.readouterr().out))

    digits = csv(["dla", str(path), "--target", ",".join(map(str, range(10))), "--pos", "b0", "--format", "csv"])
    want = dla(store, target=list(range(10)), pos="b0")
    np.testing.assert_allclose(digits["value"], want["value"], rtol=1e-12)
    assert digits["token"].to_list() == want["token"].to_list()
    mean = csv(["dla", str(path), "--target", "0,1", "--pos", "b0", "--mean", "--level", "layer", "--format", "csv"])
    assert mean.columns[:3] == ["target", "token", "role"] and mean["n"].unique().to_list() == [N_EXAMPLES]
    expr = csv(["logit-lens", str(path), "--target", "W_U[:,7]-W_U[:,3]", "--pos", "-1", "--format", "csv"])
    np.testing.assert_allclose(expr["value"], logit_lens(store, target="W_U[:,7]-W_U[:,3]", pos=-1)["value"])
    np.save(tmp_path / "v.npy", np.linspace(-1, 1, store.arch.d_model))
    vec = csv(["dla", str(path), "--direction", str(tmp_path / "v.npy"), "--final-ln", "--format", "csv"])
    np.testing.assert_allclose(vec["value"], dla(store, target=str(tmp_path / "v.npy"), final_ln=True)["value"])
    out = tmp_path / "out.csv"
    for argv, says in [(["--target", "W_U[:,99]"], "W_U has 12 columns"),
                       (["--target", "1", "--direction", "v.npy"], "pass one"),
                       (["--pos", "nosuch"], "no token has role 'nosuch'"), (["--pos", " "], "--pos is empty"),
                       (["--target", "open('x')"], "is not 'correct', 'diff'")]:
        assert main(["dla", str(path), *argv, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("actstore dla: error: ") and says in err, err
        assert not out.exists()
