"""What a method may need beyond the gradient stores: the run that produced them.

Stores hold per-token vectors, classifier features and ``p − y``. Some methods
need more: texts (``tracin_tfidf``), token strings (reports), the word-embedding
table of each checkpoint (``tracin_we_syn``), the model, parameters and encoded
inputs (``tracin_layer``/``tracin_all``). A ``RunContext`` provides them and maps
a store to the split it was extracted from (by the manifest's ``split`` name,
checked against its dataset ``fingerprint``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from tracin_jax.methods.base import MethodError
from tracin_jax.store import GradientStore

# Checkpoints whose parameters stay in host memory (scoring loops shard-outer,
# checkpoint-inner: the paper uses 3-5 checkpoints).
MAX_CACHED_PARAMS = 5


@dataclasses.dataclass(frozen=True)
class SplitData:
    """One split in store order: ``texts`` (TextDataset) and ``encoded`` (EncodedDataset)."""

    texts: Any
    encoded: Any

    def joined_texts(self) -> list[str]:
        """Each example's text, with its second segment (e.g. MNLI hypothesis) appended."""
        pairs = self.texts.text_pairs
        if pairs is None:
            return list(self.texts.texts)
        return [f"{a} {b}" for a, b in zip(self.texts.texts, pairs)]


class RunContext:
    """Model, checkpoint parameters, tokenizer and data splits of one training run.

    Args:
      model: the Flax module (``model.apply({'params': p}, ...)``).
      restore_params: ``step -> params`` of a checkpoint.
      tokenizer: has ``convert_ids_to_tokens`` and ``special_ids``.
      splits: split name -> ``SplitData``, in store order.
      split_loader: optional ``name -> SplitData`` for splits not given up front.
      setup: the run's ``RunSetup`` when built from a run directory (config, extras;
        ``stages.gradients.run_context``).
    """

    def __init__(self, model, restore_params: Callable[[int], Any], tokenizer,
                 splits: dict[str, SplitData] | None = None,
                 split_loader: Callable[[str], SplitData] | None = None, setup=None):
        self.model = model
        self.setup = setup
        self._restore = restore_params
        self.tokenizer = tokenizer
        self.splits = dict(splits or {})
        self._split_loader = split_loader
        self._verified: set[tuple[str, str]] = set()
        self._params_cache: dict[int, Any] = {}

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.tokenizer.special_ids)

    def params(self, step: int):
        """Parameters of checkpoint ``step`` (the last few restored are cached)."""
        step = int(step)
        if step not in self._params_cache:
            if len(self._params_cache) >= MAX_CACHED_PARAMS:
                self._params_cache.pop(next(iter(self._params_cache)))
            self._params_cache[step] = self._restore(step)
        return self._params_cache[step]

    def add_split(self, name: str, texts, encoded) -> None:
        self.splits[name] = SplitData(texts, encoded)
        self._verified = {v for v in self._verified if v[0] != name}

    def split_for(self, store: GradientStore) -> SplitData:
        """The split a store was extracted from, verified by dataset fingerprint."""
        name = store.manifest.get("split")
        if name not in self.splits and self._split_loader is not None:
            try:
                self.splits[name] = self._split_loader(name)
            except ValueError as e:
                raise MethodError(f"store {store.directory} has split {name!r}, which the run "
                                  f"cannot rebuild: {e}") from e
        if name not in self.splits:
            raise MethodError(f"store {store.directory} has split {name!r}; the run context "
                              f"knows {sorted(self.splits)}")
        data = self.splits[name]
        expected = store.manifest.get("fingerprint")
        if (name, expected) in self._verified:
            return data
        if data.texts.fingerprint() != expected or len(data.texts) != store.num_examples:
            raise MethodError(
                f"store {store.directory} (split {name!r}, {store.num_examples} examples, "
                f"fingerprint {expected}) was not extracted from this run's {name!r} split "
                f"({len(data.texts)} examples, fingerprint {data.texts.fingerprint()})")
        self._verified.add((name, expected))
        return data

    def decode(self, token_ids) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(np.asarray(token_ids).reshape(-1))


def require_context(context, method_name: str, what: str) -> RunContext:
    if context is None:
        raise MethodError(f"method {method_name!r} needs the training run ({what}); pass a "
                          "RunContext (CLI: --run RUN_DIR)")
    return context
