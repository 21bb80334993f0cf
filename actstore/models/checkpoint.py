"""Local Hugging Face GPT-2 checkpoints (a `save_pretrained` directory) as HookedTransformers.

Fully offline: the HF model and tokenizer are read from the directory with the hub in offline
mode, the TransformerLens config is built from the HF config here (TransformerLens would ask the
hub for it by name), and the weights are converted with TransformerLens's GPT-2 converter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from actstore.errors import ModelUnavailableError, UnknownModelError
from actstore.models.backend import build_model, load_weights, place, quiet_transformer_lens
from actstore.models.hub import hub_offline

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def is_hf_checkpoint(path: Path) -> bool:
    """A directory holding a Hugging Face `config.json`."""
    return path.is_dir() and (path / "config.json").is_file()


def tl_config_from_hf(hf_config: Any, name: str) -> dict[str, Any]:
    """TransformerLens config fields of a GPT-2 HF config."""
    d_model, n_heads = hf_config.n_embd, hf_config.n_head
    return dict(
        n_layers=hf_config.n_layer,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_model // n_heads,
        d_mlp=hf_config.n_inner or 4 * d_model,
        d_vocab=hf_config.vocab_size,
        d_vocab_out=hf_config.vocab_size,
        n_ctx=hf_config.n_positions,
        act_fn=hf_config.activation_function,
        eps=hf_config.layer_norm_epsilon,
        normalization_type="LN",
        positional_embedding_type="standard",
        attn_only=False,
        scale_attn_by_inverse_layer_idx=bool(getattr(hf_config, "scale_attn_by_inverse_layer_idx", False)),
        original_architecture="GPT2LMHeadModel",
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        model_name=name,
    )


def load_gpt2_checkpoint(path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                         process: bool = True) -> Any:
    """A HookedTransformer from a local GPT-2 checkpoint directory (with its tokenizer if saved)."""
    path = Path(path)
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise UnknownModelError(f"checkpoint {str(path)!r}: cannot read config.json ({e})") from None
    if model_type != "gpt2":
        raise UnknownModelError(
            f"checkpoint {str(path)!r} is a {model_type!r} model; only GPT-2 checkpoints load from a directory "
            "(use a TransformerLens pretrained name for other architectures)"
        )
    with quiet_transformer_lens():
        from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import AutoTokenizer, GPT2LMHeadModel

    with hub_offline():
        try:
            hf_model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise ModelUnavailableError(f"checkpoint {str(path)!r}: cannot load the GPT-2 weights ({e})") from None
        tokenizer = None
        if any((path / f).is_file() for f in TOKENIZER_FILES):
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError) as e:
                raise ModelUnavailableError(
                    f"checkpoint {str(path)!r}: cannot load its tokenizer ({e}); save it with "
                    "tokenizer.save_pretrained(dir), or remove the partial tokenizer files"
                ) from None
        config = tl_config_from_hf(hf_model.config, name=str(path))
        model = build_model(config, device="cpu", tokenizer=tokenizer)
        state_dict = convert_gpt2_weights(hf_model, model.cfg)
        load_weights(model, state_dict, process=process)
    del hf_model
    return place(model, device, dtype)
