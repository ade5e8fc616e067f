"""``tracin-jax import``: checkpoints trained elsewhere → a run directory."""
from __future__ import annotations

from tracin_jax.commands import no_overrides, print_json
from tracin_jax.errors import UsageError
from tracin_jax.stages.imports import import_hf


def _numbers(text, kind, name):
    if text is None:
        return None
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--{name} {text!r} is not a comma-separated list of numbers") from None


def run(args, overrides) -> int:
    no_overrides("import", overrides, "the run's config is written from the checkpoints")
    record = import_hf(args.hf, args.out, lrs=_numbers(args.lr, float, "lr"), trainer_state=args.trainer_state,
                       steps=_numbers(args.steps, int, "steps"), tokenizer=args.tokenizer,
                       max_length=args.max_length, overwrite=args.overwrite)
    print_json({"run": args.out, **record})
    return 0
