"""`actstore dataset TASK`: write a task's examples to Parquet."""

from __future__ import annotations

import argparse
from typing import Any

from actstore.cli import parse_params
from actstore.datasets import get_task, task_names
from actstore.errors import InvalidParameterError
from actstore.outputs import atomic_output, check_output_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="write a task's examples (tokens, answers, labels) to Parquet")
    p.add_argument("task", help=f"one of: {', '.join(task_names())} (prompts: --param file=PATH.jsonl|csv)")
    p.add_argument("--n", type=int, default=1000, help="number of examples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="task parameter, repeatable")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="tokenize text with this model's tokenizer (zoo:lm, a pretrained name, a checkpoint); "
                        "default: the zoo's word tokenizer for ioi and days; prompts needs it")
    p.add_argument("-o", "--output", required=True, help="output .parquet file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_path(args.output)
    if out.suffix.lower() != ".parquet":
        raise InvalidParameterError(f"-o {args.output!r} must end in .parquet (the dataset is written as Parquet)")
    task = get_task(args.task, **parse_params(args.param))
    data = task.generate(args.n, args.seed, tokenizer=_tokenizer(args.model, args.task, task.vocab is None))
    with atomic_output(out) as f:  # never a half-written file under the real name
        data.to_frame().write_parquet(f)
    print(f"wrote {len(data)} {args.task} examples to {args.output}")
    return 0


def _tokenizer(model: str | None, task: str, text_task: bool) -> Any:
    """The tokenizer of the model `model` names (None: none named, the task's default)."""
    if model is None:
        return None
    if not text_task:
        raise InvalidParameterError(f"--model {model}: task {task} has its own token ids; --model names the "
                                    "tokenizer of a text task (ioi, days, prompts)")
    from actstore.models import load_model  # torch and TransformerLens only when a model is named

    tokenizer = getattr(load_model(model), "tokenizer", None)
    if tokenizer is None:
        raise InvalidParameterError(f"--model {model} has no tokenizer (it reads token ids only); task {task} "
                                    "tokenizes text: name a model with a tokenizer, such as zoo:lm")
    return tokenizer
