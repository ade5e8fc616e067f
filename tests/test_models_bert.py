"""BertClassifier behaviour (HF parity itself is in test_models_hf_convert.py)."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from tracin_jax.models import (WORD_EMBEDDING_PATH, BertClassifier, BertConfig, ModelOutput,
                               build_model, check_token_ids, get_word_embedding_table,
                               init_params)
from tracin_jax.models.bert import roberta_position_ids

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, num_labels=3)
SEQ = 12


def _config(model_type, **overrides):
    extra = dict(type_vocab_size=1, pad_token_id=1) if model_type == "roberta" else {}
    return BertConfig(model_type=model_type, **{**TINY, **extra, **overrides})


@pytest.fixture(scope="module", params=["bert", "roberta"])
def setup(request):
    """(model, params) with every parameter moved off its init (biases, LayerNorm)."""
    model = BertClassifier(_config(request.param))
    params = init_params(model, jax.random.PRNGKey(0), SEQ)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(treedef, [x + 0.1 * jax.random.normal(k, x.shape)
                                          for x, k in zip(leaves, keys)])
    return model, params


def _batch(pad_id, lengths=(12, 7, 4), seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, TINY["vocab_size"], size=(len(lengths), SEQ))
    mask = np.arange(SEQ)[None, :] < np.array(lengths)[:, None]
    ids = np.where(mask, ids, pad_id)
    types = (np.arange(SEQ)[None, :] >= 2) & mask
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(types, jnp.int32)


def test_output_shapes_dtypes_and_param_paths(setup):
    model, params = setup
    ids, mask, types = _batch(model.config.pad_token_id)
    out = model.apply({"params": params}, ids, mask, types)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, 3) and out.features.shape == (3, 32)
    assert out.logits.dtype == jnp.float32 and out.features.dtype == jnp.float32
    assert get_word_embedding_table(params).shape == (100, 32)
    assert params["classifier"]["kernel"].shape == (32, 3)
    assert sorted(params["encoder"]) == ["layer_0", "layer_1"]
    # features are the classifier's input: logits = features @ W + b.
    expected = out.features @ params["classifier"]["kernel"] + params["classifier"]["bias"]
    np.testing.assert_allclose(out.logits, expected, rtol=1e-5, atol=1e-6)


def test_embed_words_is_the_table_lookup_and_inputs_embeds_path_matches(setup):
    model, params = setup
    ids, mask, types = _batch(model.config.pad_token_id)
    embeds = model.apply({"params": params}, ids, method="embed_words")
    table = np.asarray(params["embeddings"]["word_embeddings"]["embedding"])
    np.testing.assert_array_equal(embeds, table[np.asarray(ids)])
    by_ids = model.apply({"params": params}, ids, mask, types)
    by_embeds = model.apply({"params": params}, None, mask, types, inputs_embeds=embeds)
    np.testing.assert_allclose(by_embeds.logits, by_ids.logits, rtol=1e-6, atol=1e-6)
    # inputs_embeds really replaces E[x]: perturbing it changes the logits (a random
    # perturbation; a constant shift would be removed by the embedding LayerNorm).
    noise = 0.5 * jax.random.normal(jax.random.PRNGKey(9), embeds.shape)
    moved = model.apply({"params": params}, None, mask, types, inputs_embeds=embeds + noise)
    assert not np.allclose(moved.logits, by_ids.logits, atol=1e-3)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model.apply({"params": params}, ids, mask, inputs_embeds=embeds)


def test_dropout_only_in_training_mode(setup):
    model, params = setup
    ids, mask, types = _batch(model.config.pad_token_id)
    a = model.apply({"params": params}, ids, mask, types, deterministic=True)
    b = model.apply({"params": params}, ids, mask, types, deterministic=True,
                    rngs={"dropout": jax.random.PRNGKey(5)})
    np.testing.assert_array_equal(a.logits, b.logits)

    def train(seed):
        return model.apply({"params": params}, ids, mask, types, deterministic=False,
                           rngs={"dropout": jax.random.PRNGKey(seed)}).logits

    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2), atol=1e-4)
    assert not np.allclose(train(1), a.logits, atol=1e-4)


def test_padding_invariance(setup):
    """A row's logits do not depend on how much padding follows it, nor on the ids
    stored at padded positions (positions and masking come from attention_mask)."""
    model, params = setup
    rng = np.random.default_rng(3)
    real = rng.integers(3, 100, size=(1, 5))
    short_out = model.apply({"params": params}, jnp.asarray(real, jnp.int32),
                            jnp.ones((1, 5), jnp.int32))
    garbage = rng.integers(0, 100, size=(1, 9))
    padded = jnp.asarray(np.concatenate([real, garbage], axis=1), jnp.int32)
    mask = jnp.asarray(np.arange(14)[None, :] < 5, jnp.int32)
    long_out = model.apply({"params": params}, padded, mask)
    np.testing.assert_allclose(long_out.logits, short_out.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(long_out.features, short_out.features, rtol=1e-5, atol=1e-6)


def test_all_padding_row_is_finite(setup):
    model, params = setup
    ids, mask, types = _batch(model.config.pad_token_id, lengths=(12, 0, 4))
    embeds = model.apply({"params": params}, ids, method="embed_words")

    def loss(e):
        return model.apply({"params": params}, None, mask, types, inputs_embeds=e).logits.sum()

    out = model.apply({"params": params}, ids, mask, types)
    grads = jax.grad(loss)(embeds)
    assert np.isfinite(out.logits).all() and np.isfinite(grads).all()
    # The other rows are unaffected by the padding row next to them.
    alone = model.apply({"params": params}, ids[:1], mask[:1], types[:1])
    np.testing.assert_allclose(out.logits[:1], alone.logits, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_is_close_to_float32(setup):
    model, params = setup
    ids, mask, types = _batch(model.config.pad_token_id)
    bf16 = BertClassifier(dataclasses.replace(model.config, dtype="bfloat16"))
    out16 = bf16.apply({"params": params}, ids, mask, types)
    out32 = model.apply({"params": params}, ids, mask, types)
    assert out16.logits.dtype == jnp.float32
    scale = np.abs(out32.logits).max()
    np.testing.assert_allclose(out16.logits, out32.logits, atol=0.05 * scale)
    assert not np.array_equal(out16.logits, out32.logits)  # bf16 really was used


def test_roberta_position_ids_match_hf_rule():
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    expected = np.array([[2, 3, 4, 1, 1], [2, 3, 4, 5, 6], [1, 1, 1, 1, 1]])  # pad id 1
    np.testing.assert_array_equal(roberta_position_ids(jnp.asarray(mask), 1), expected)


def test_sequence_longer_than_positions_raises():
    model = BertClassifier(_config("roberta", max_position_embeddings=10))
    with pytest.raises(ValueError, match="max_position_embeddings is 10"):
        init_params(model, jax.random.PRNGKey(0), 9)  # needs positions up to 1 + 9
    init_params(model, jax.random.PRNGKey(0), 8)
    with pytest.raises(ValueError, match="sequence length 11 exceeds"):
        init_params(BertClassifier(_config("bert", max_position_embeddings=10)),
                    jax.random.PRNGKey(0), 11)


def test_config_validation_and_hf_dict_round_trip():
    config = _config("roberta", hidden_act="gelu_new", dtype="bfloat16")
    d = config.to_hf_dict()
    assert d["architectures"] == ["RobertaForSequenceClassification"]
    assert len(d["id2label"]) == 3
    assert BertConfig.from_hf_dict(d, dtype="bfloat16") == config
    assert BertConfig.from_hf_dict(d, num_labels=7).num_labels == 7
    with pytest.raises(ValueError, match="hidden_act"):
        _config("bert", hidden_act="swish")
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads 5"):
        _config("bert", num_attention_heads=5)
    with pytest.raises(ValueError, match="'float16'"):
        _config("bert", dtype="float16")
    with pytest.raises(ValueError, match="'relative_key'"):
        BertConfig.from_hf_dict({**d, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="num_labels is required"):
        BertConfig.from_hf_dict({k: v for k, v in d.items() if k != "id2label"})


def test_build_model_from_config_and_hf_dir(tmp_path):
    cfg = ConfigDict(dict(kind="roberta", **TINY, hf_dir=None, dtype="float32"))
    model = build_model(cfg)
    assert model.config.model_type == "roberta"
    assert model.config.pad_token_id == 1 and model.config.type_vocab_size == 1  # RoBERTa defaults
    assert model.config.hidden_size == 32

    hf = _config("bert", hidden_size=16, num_attention_heads=2).to_hf_dict()
    (tmp_path / "config.json").write_text(json.dumps(hf))
    from_dir = build_model(ConfigDict(dict(kind="bert", hf_dir=str(tmp_path), num_labels=4,
                                           dtype="bfloat16")))
    assert from_dir.config.hidden_size == 16 and from_dir.config.num_labels == 4
    assert from_dir.config.dtype == "bfloat16"
    with pytest.raises(ValueError, match="model_type 'bert'"):
        build_model(ConfigDict(dict(kind="roberta", hf_dir=str(tmp_path), num_labels=4)))
    with pytest.raises(ValueError, match="'transformer'"):
        build_model(ConfigDict(dict(kind="transformer")))


def test_check_token_ids():
    check_token_ids(np.array([[0, 5, 99]]), 100)
    with pytest.raises(ValueError, match="token id 30521 .* 25000 rows .*2 ids out of range"):
        check_token_ids(np.array([[101, 30521, 0], [30000, 5, 0]]), 25000)
    with pytest.raises(ValueError, match="token id -1 "):
        check_token_ids(np.array([3, -1]), 100)
    with pytest.raises(ValueError, match="integers"):
        check_token_ids(np.array([1.0]), 100)
    assert WORD_EMBEDDING_PATH == ("embeddings", "word_embeddings", "embedding")
