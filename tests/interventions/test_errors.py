"""Bad intervention requests: each is one ActstoreError subclass with a message that names what was
wrong, raised before the model is loaded where the store alone can tell (the model passed is one
that fails the test if touched), and nothing is written under STORE/interventions."""

from __future__ import annotations

from pathlib import Path

import pytest
from iv_helpers import tiny_model

from actstore.cli import main
from actstore.errors import ActstoreError, InvalidParameterError, ModelMismatchError, UnknownHookError
from actstore.interventions import ablate, attribution_patch, patch, path_patch
from actstore.store.sweeps import SWEEPS


class Unusable:
    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name!r}) before the request was checked")


def listing(root: Path) -> list[str]:
    base = root / SWEEPS
    return sorted(str(p.relative_to(base)) for p in base.rglob("*")) if base.exists() else []


CASES = [
    # (store, call, error, message)
    ("addition", lambda s, m: patch(s, "hook_zz", "head", model=m), InvalidParameterError, "unknown hook 'hook_zz'"),
    ("addition", lambda s, m: patch(s, "mlp_out", "layer", model=m), InvalidParameterError, "attention-only"),
    ("addition", lambda s, m: ablate(s, "resid_mid", "layer,pos", method="zero", model=m), InvalidParameterError,
     "attention-only"),
    ("addition", lambda s, m: patch(s, "z", "layer", model=m), InvalidParameterError, "not --grain layer"),
    ("addition", lambda s, m: patch(s, "resid_pre", "head,pos", model=m), InvalidParameterError,
     "not --grain head,pos"),
    ("addition", lambda s, m: patch(s, "z", "neuron", model=m), InvalidParameterError, "grain must be one of"),
    ("ioi", lambda s, m: patch(s, "resid_pre", "layer,pos", pos="S3", model=m), InvalidParameterError,
     "unknown role 'S3'; roles: END, IO, S1, S2"),
    ("brackets", lambda s, m: patch(s, "resid_pre", "layer,pos", pos="open", model=m), InvalidParameterError,
     "role 'open' names"),
    ("addition", lambda s, m: patch(s, "resid_pre", "layer,pos", pos="14", model=m), InvalidParameterError,
     "position 14 is outside 0..13"),
    ("addition", lambda s, m: patch(s, "z", "head", pos="0", model=m), InvalidParameterError, "--pos picks positions"),
    ("addition", lambda s, m: patch(s, "z", "head", pos=" , ", model=m), InvalidParameterError, "--pos expects"),
    ("addition", lambda s, m: patch(s, "z", "head", examples=1000, model=m), InvalidParameterError,
     "1000 examples asked"),
    ("addition", lambda s, m: patch(s, "z", "head", examples=(20, 40), model=m), InvalidParameterError,
     "examples 20..39 asked"),
    ("addition", lambda s, m: patch(s, "z", "head", examples=0, model=m), InvalidParameterError, "positive count"),
    ("addition", lambda s, m: patch(s, "z", "head", mode="both", model=m), InvalidParameterError, "mode must be"),
    ("addition", lambda s, m: patch(s, "z", "head", metrics=("accuracy",), model=m), InvalidParameterError,
     "metrics must be"),
    ("addition", lambda s, m: ablate(s, "z", "head", method="mean", mean_over="label:nope", model=m),
     InvalidParameterError, "no label column 'nope'"),
    ("addition", lambda s, m: ablate(s, "z", "head", method="zero", mean_over="pos", model=m), InvalidParameterError,
     "--mean-over applies to --method mean"),
    ("addition", lambda s, m: ablate(s, "z", "head", method="shuffle", model=m), InvalidParameterError,
     "ablation method"),
    ("addition", lambda s, m: path_patch(s, "0.1", model=m), InvalidParameterError, "receivers in layer 0"),
    ("addition", lambda s, m: path_patch(s, "1.7", model=m), InvalidParameterError,
     "receiver 1.7 is not a head of this model"),
    ("addition", lambda s, m: path_patch(s, "5.0", model=m), InvalidParameterError,
     "receiver 5.0 is not a head of this model"),
    ("addition", lambda s, m: path_patch(s, "one.two", model=m), InvalidParameterError, "is not 'logits' or a head"),
    ("addition", lambda s, m: path_patch(s, "1.0", "o", model=m), InvalidParameterError, "receiver input"),
    ("addition", lambda s, m: attribution_patch(s, "z", "head", pos="a0", model=m), InvalidParameterError,
     "--pos picks positions"),
]


@pytest.mark.parametrize(("name", "call", "error", "message"), CASES, ids=[c[3][:30] for c in CASES])
def test_bad_requests_are_refused_before_the_model_loads(iv_fresh, tmp_path, name, call, error, message):
    path = iv_fresh(name, tmp_path / "s")
    with pytest.raises(error) as e:
        call(path, Unusable())
    assert isinstance(e.value, ActstoreError)
    assert message in str(e.value), str(e.value)
    assert listing(path) == []


def test_logit_diff_needs_counter_tokens(marked_store):
    store, net = marked_store
    before = listing(store.path)
    for metrics in (("logit_diff",), ("logprob", "logit_diff")):
        with pytest.raises(InvalidParameterError, match="no counterfactual tokens: metric logit_diff"):
            patch(store, "z", "head", metrics=metrics, model=Unusable())
    with pytest.raises(InvalidParameterError, match="logit_diff"):  # the default metrics include it
        ablate(store, "z", "head", method="zero", model=Unusable())
    assert listing(store.path) == before


def test_a_model_with_other_weights_is_refused(iv_fresh, tmp_path):
    mlp = iv_fresh("mlp", tmp_path / "mlp")
    with pytest.raises(ModelMismatchError, match="other weights than store"):
        patch(mlp, "z", "head", examples=2, model=tiny_model(seed=1))
    add = iv_fresh("addition", tmp_path / "add")
    with pytest.raises(ModelMismatchError, match="model 'zoo:list_update' has other weights"):
        patch(add, "z", "head", examples=2, model="zoo:list_update")
    assert listing(mlp) == [] and listing(add) == []


def test_a_hook_the_model_lacks_is_unknown(iv_store):
    """The store's architecture refuses mlp_out / resid_mid on attention-only models before the model
    loads (CASES above); once it is loaded, check_hook refuses a hook the model lacks, by its full
    name. (TransformerLens gives attention-only blocks a hook_mlp_out that never fires, so only the
    architecture check catches mlp_out.)"""
    from actstore.interventions.model import model_for
    from actstore.interventions.targets import check_hook

    net = model_for(iv_store("addition"))
    with pytest.raises(UnknownHookError, match="has no blocks.0.hook_resid_mid"):
        check_hook("resid_mid", net.cfg.n_layers, net.hook_dict)
    check_hook("q", net.cfg.n_layers, net.hook_dict)


def test_the_cli_refuses_pos_without_a_pos_grain(iv_fresh, tmp_path, capsys):
    path = iv_fresh("addition", tmp_path / "s")
    code = main(["patch", str(path), "--hook", "z", "--grain", "head", "--pos", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert "--pos picks positions" in err and len(err.strip().splitlines()) == 1
    assert listing(path) == []
