"""Hugging Face BERT/RoBERTa checkpoints <-> BertClassifier params.

Reads `config.json` plus `model.safetensors` (or a sharded
`model.safetensors.index.json`), or `pytorch_model.bin` through
`torch.load(weights_only=True)` when torch is installed. Nothing is unpickled
otherwise and no code from a checkpoint is ever executed.

Name mapping (HF -> ours), with an optional `bert.`/`roberta.` prefix on encoder keys:
    embeddings.{word,position,token_type}_embeddings.weight -> embeddings/*/embedding
    embeddings.LayerNorm.{weight,bias}                      -> embeddings/layer_norm/{scale,bias}
    encoder.layer.i.attention.self.{query,key,value}        -> encoder/layer_i/attention/{...}
    encoder.layer.i.attention.output.dense                  -> encoder/layer_i/attention/output
    encoder.layer.i.attention.output.LayerNorm              -> encoder/layer_i/attention_layer_norm
    encoder.layer.i.intermediate.dense                      -> encoder/layer_i/intermediate
    encoder.layer.i.output.dense                            -> encoder/layer_i/output
    encoder.layer.i.output.LayerNorm                        -> encoder/layer_i/output_layer_norm
    BERT:    pooler.dense -> pooler,  classifier -> classifier
    RoBERTa: classifier.dense (else roberta pooler.dense) -> pooler,
             classifier.out_proj -> classifier
Linear weights are (out, in) and are transposed into Dense kernels (in, out).
"""
from __future__ import annotations

import json
import logging
import os
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from tracin_jax.models import init_params
from tracin_jax.models.bert import BertClassifier, BertConfig

logger = logging.getLogger(__name__)

Path = tuple[str, ...]
# (HF tensor name, our param path, transpose?)
Entry = tuple[str, Path, bool]


def _linear(hf: str, ours: Path) -> list[Entry]:
    return [(f"{hf}.weight", ours + ("kernel",), True), (f"{hf}.bias", ours + ("bias",), False)]


def _layer_norm(hf: str, ours: Path) -> list[Entry]:
    return [(f"{hf}.weight", ours + ("scale",), False), (f"{hf}.bias", ours + ("bias",), False)]


def _encoder_entries(config: BertConfig, prefix: str) -> list[Entry]:
    """Embeddings and transformer layers (always required)."""
    e = prefix + "embeddings."
    entries = [
        (e + "word_embeddings.weight", ("embeddings", "word_embeddings", "embedding"), False),
        (e + "position_embeddings.weight", ("embeddings", "position_embeddings", "embedding"), False),
        (e + "token_type_embeddings.weight", ("embeddings", "token_type_embeddings", "embedding"),
         False),
        *_layer_norm(e + "LayerNorm", ("embeddings", "layer_norm")),
    ]
    for i in range(config.num_hidden_layers):
        hf, ours = f"{prefix}encoder.layer.{i}.", ("encoder", f"layer_{i}")
        for name in ("query", "key", "value"):
            entries += _linear(hf + f"attention.self.{name}", ours + ("attention", name))
        entries += _linear(hf + "attention.output.dense", ours + ("attention", "output"))
        entries += _layer_norm(hf + "attention.output.LayerNorm", ours + ("attention_layer_norm",))
        entries += _linear(hf + "intermediate.dense", ours + ("intermediate",))
        entries += _linear(hf + "output.dense", ours + ("output",))
        entries += _layer_norm(hf + "output.LayerNorm", ours + ("output_layer_norm",))
    return entries


def _head_names(model_type: str, prefix: str) -> dict[str, list[str]]:
    """HF module names that can fill our pooler / classifier, in order of preference."""
    if model_type == "bert":
        return {"pooler": [prefix + "pooler.dense"], "classifier": ["classifier"]}
    return {"pooler": ["classifier.dense", prefix + "pooler.dense"],
            "classifier": ["classifier.out_proj"]}


def weight_files(directory) -> list[str]:
    """The weight files of a checkpoint directory this module can read (empty: none)."""
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return [n for n in names if os.path.exists(os.path.join(directory, n))]


def _read_tensors(directory: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory as float32 numpy arrays."""
    st_file = os.path.join(directory, "model.safetensors")
    index_file = os.path.join(directory, "model.safetensors.index.json")
    bin_file = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(st_file):
        raw = safetensors.numpy.load_file(st_file)
    elif os.path.exists(index_file):
        with open(index_file) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        raw = {}
        for shard in shards:
            raw.update(safetensors.numpy.load_file(os.path.join(directory, shard)))
    elif os.path.exists(bin_file):
        try:
            import torch
        except ImportError as err:
            raise ImportError(
                f"{bin_file} can only be read with torch installed; install torch or convert "
                "the checkpoint to model.safetensors") from err
        state = torch.load(bin_file, weights_only=True, map_location="cpu")
        raw = {k: v.detach().to(torch.float32).numpy() for k, v in state.items()
               if isinstance(v, torch.Tensor)}
    else:
        raise FileNotFoundError(
            f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {directory}")
    tensors = {}
    for name, value in raw.items():
        # Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias")
        tensors[name] = np.asarray(value, dtype=np.float32)
    return tensors


def _set(tree: dict, path: Path, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _get(tree, path: Path):
    for key in path:
        tree = tree[key]
    return tree


def load_hf_checkpoint(directory: str, num_labels: int | None = None, rng_seed: int = 0,
                       dtype: str = "float32") -> tuple[BertConfig, dict]:
    """Loads a HF BERT/RoBERTa checkpoint (bare encoder or *ForSequenceClassification).

    Parts of the head absent from the checkpoint (the classifier of a bare encoder,
    a missing pooler) are initialised randomly from `rng_seed`; a bare encoder
    needs `num_labels`. Returns (config, float32 params).
    """
    with open(os.path.join(directory, "config.json")) as f:
        hf_config = json.load(f)
    model_type = hf_config.get("model_type")
    if model_type not in ("bert", "roberta"):
        raise ValueError(f"{directory}: model_type must be 'bert' or 'roberta', got {model_type!r}")
    tensors = _read_tensors(directory)
    prefix = f"{model_type}." if any(k.startswith(f"{model_type}.") for k in tensors) else ""
    heads = _head_names(model_type, prefix)

    present = {part: next((n for n in names if f"{n}.weight" in tensors), None)
               for part, names in heads.items()}
    if present["classifier"] is not None:
        head_labels = tensors[present["classifier"] + ".weight"].shape[0]
        if num_labels is not None and num_labels != head_labels:
            raise ValueError(f"num_labels={num_labels} but the checkpoint's classifier has "
                             f"{head_labels} outputs")
        num_labels = head_labels
    elif num_labels is None:
        raise ValueError(f"{directory} has no classification head: num_labels is required")
    config = BertConfig.from_hf_dict(hf_config, num_labels=num_labels, dtype=dtype)

    model = BertClassifier(config)
    seq_len = min(8, config.max_position_embeddings - config.pad_token_id - 1)
    params = jax.tree.map(np.asarray, init_params(model, jax.random.PRNGKey(rng_seed), seq_len))
    entries = _encoder_entries(config, prefix)
    for part, hf_name in present.items():
        if hf_name is None:
            logger.info("%s: no %s in the checkpoint, initialised randomly (seed %d)",
                        directory, part, rng_seed)
        else:
            entries += _linear(hf_name, (part,))

    missing = [name for name, _, _ in entries if name not in tensors]
    if missing:
        raise ValueError(f"{directory}: {len(missing)} required tensors missing: {missing}")
    mismatched = []
    for name, path, transpose in entries:
        value = tensors[name].T if transpose else tensors[name]
        expected = _get(params, path).shape
        if value.shape != expected:
            mismatched.append(f"{name}: {value.shape} (expected {expected})")
        _set(params, path, value)
    if mismatched:
        raise ValueError(f"{directory}: tensors with wrong shapes: {mismatched}")
    unused = sorted(set(tensors) - {name for name, _, _ in entries})
    if unused:
        logger.info("%s: %d checkpoint tensors unused: %s", directory, len(unused),
                    unused[:10] + (["..."] if len(unused) > 10 else []))
    return config, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def save_hf_checkpoint(directory: str, config: BertConfig, params) -> None:
    """Writes config.json + model.safetensors loadable by transformers'
    Bert/RobertaForSequenceClassification.from_pretrained(directory)."""
    prefix = config.model_type + "."
    heads = _head_names(config.model_type, prefix)
    entries = (_encoder_entries(config, prefix) + _linear(heads["pooler"][0], ("pooler",))
               + _linear(heads["classifier"][0], ("classifier",)))
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    all_paths = {tuple(str(k.key) for k in path) for path, _ in leaves}
    unmapped = sorted(all_paths - {path for _, path, _ in entries})
    if unmapped:
        raise ValueError(f"params have leaves with no HF name: {unmapped}")
    tensors: dict[str, np.ndarray] = {}
    for name, path, transpose in entries:
        value = np.asarray(_get(params, path), dtype=np.float32)
        tensors[name] = np.ascontiguousarray(value.T if transpose else value)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(), f, indent=2, sort_keys=True)
    safetensors.numpy.save_file(tensors, os.path.join(directory, "model.safetensors"),
                                metadata={"format": "pt"})


__all__ = ["load_hf_checkpoint", "save_hf_checkpoint", "weight_files"]
