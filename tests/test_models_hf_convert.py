"""Parity of BertClassifier with transformers' PyTorch BERT/RoBERTa through hf_convert."""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tracin_jax.models import BertClassifier, init_params  # noqa: E402
from tracin_jax.models.hf_convert import load_hf_checkpoint, save_hf_checkpoint  # noqa: E402

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, num_labels=3)
LENGTHS = (10, 6, 3)  # real tokens per row; the rest is padding


def _torch_model(model_type, bare=False):
    """A random tiny HF model in eval mode, every parameter perturbed so biases and
    LayerNorm parameters are not at their trivial init."""
    torch.manual_seed(0)
    if model_type == "bert":
        cfg = transformers.BertConfig(**TINY, type_vocab_size=2, attn_implementation="eager")
        cls = transformers.BertModel if bare else transformers.BertForSequenceClassification
    else:
        cfg = transformers.RobertaConfig(**TINY, type_vocab_size=1, pad_token_id=1,
                                         attn_implementation="eager")
        cls = transformers.RobertaModel if bare else transformers.RobertaForSequenceClassification
    model = cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _batch(model_type):
    rng = np.random.default_rng(1)
    pad = 0 if model_type == "bert" else 1
    seq = max(LENGTHS)
    ids = rng.integers(3, TINY["vocab_size"], size=(len(LENGTHS), seq)).astype(np.int64)
    mask = (np.arange(seq)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, pad)
    if model_type == "bert":  # second segment on the last half of the real tokens
        types = ((np.arange(seq)[None, :] >= np.array(LENGTHS)[:, None] // 2) & (mask == 1))
        types = types.astype(np.int64)
    else:
        types = None
    labels = np.array([0, 2, 1], np.int64)
    return ids, mask, types, labels


def _torch_logits_and_embedding_grads(model, model_type, ids, mask, types, labels):
    """HF logits and d(sum CE)/d(word-embedding output), captured with a forward hook."""
    captured = {}

    def hook(module, inputs, output):
        output.retain_grad()
        captured["e"] = output

    base = getattr(model, model_type)
    handle = base.embeddings.word_embeddings.register_forward_hook(hook)
    out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                token_type_ids=None if types is None else torch.from_numpy(types))
    loss = torch.nn.functional.cross_entropy(out.logits, torch.from_numpy(labels),
                                             reduction="sum")
    loss.backward()
    handle.remove()
    return out.logits.detach().numpy(), captured["e"].grad.numpy()


def _jax_logits_and_embedding_grads(model, params, ids, mask, types, labels):
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    types = None if types is None else jnp.asarray(types, jnp.int32)
    embeds = model.apply({"params": params}, ids, method="embed_words")

    def loss_fn(e):
        out = model.apply({"params": params}, None, mask, types, inputs_embeds=e)
        loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, jnp.asarray(labels))
        return loss.sum(), out.logits

    grads, logits = jax.grad(loss_fn, has_aux=True)(embeds)
    return np.asarray(logits), np.asarray(grads)


def _assert_close(actual, expected, rtol=1e-5):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_logits_and_embedding_grads_match_transformers(tmp_path, model_type):
    torch_model = _torch_model(model_type)
    torch_model.save_pretrained(tmp_path)  # safetensors
    assert (tmp_path / "model.safetensors").exists()
    config, params = load_hf_checkpoint(str(tmp_path))
    assert config.model_type == model_type and config.num_labels == 3
    model = BertClassifier(config)

    batch = _batch(model_type)
    ref_logits, ref_grads = _torch_logits_and_embedding_grads(torch_model, model_type, *batch)
    logits, grads = _jax_logits_and_embedding_grads(model, params, *batch)
    assert np.abs(ref_logits).max() > 0.1  # a non-trivial comparison
    _assert_close(logits, ref_logits)
    _assert_close(grads, ref_grads)
    # Padded positions never receive gradient, in either implementation.
    mask = batch[1]
    assert np.all(grads[mask == 0] == 0) and np.all(ref_grads[mask == 0] == 0)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_save_then_transformers_loads_same_model(tmp_path, model_type):
    torch_model = _torch_model(model_type)
    torch_model.save_pretrained(tmp_path / "src")
    config, params = load_hf_checkpoint(str(tmp_path / "src"))
    # Move every parameter so the round trip cannot pass by reloading the source.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    params = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape)
                                          for x, k in zip(leaves, keys)])

    save_hf_checkpoint(str(tmp_path / "out"), config, params)
    cls = (transformers.BertForSequenceClassification if model_type == "bert"
           else transformers.RobertaForSequenceClassification)
    reloaded, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True,
                                         attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, types, labels = _batch(model_type)
    ref_logits, _ = _torch_logits_and_embedding_grads(reloaded.eval(), model_type, ids, mask,
                                                      types, labels)
    logits, _ = _jax_logits_and_embedding_grads(BertClassifier(config), params, ids, mask, types,
                                                labels)
    _assert_close(logits, ref_logits)

    config2, params2 = load_hf_checkpoint(str(tmp_path / "out"))
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_pytorch_bin_loads_like_safetensors(tmp_path):
    torch_model = _torch_model("bert")
    torch_model.save_pretrained(tmp_path / "st")
    (tmp_path / "bin").mkdir()
    torch_model.config.to_json_file(tmp_path / "bin" / "config.json")
    torch.save(torch_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    _, from_st = load_hf_checkpoint(str(tmp_path / "st"))
    _, from_bin = load_hf_checkpoint(str(tmp_path / "bin"))
    jax.tree.map(np.testing.assert_array_equal, from_bin, from_st)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_bare_encoder_loads_pooler_and_seeds_classifier(tmp_path, model_type):
    torch_model = _torch_model(model_type, bare=True)
    torch_model.save_pretrained(tmp_path)
    names = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    assert not any(n.startswith(model_type + ".") for n in names)  # bare: no prefix

    with pytest.raises(ValueError, match="num_labels is required"):
        load_hf_checkpoint(str(tmp_path))
    config, params = load_hf_checkpoint(str(tmp_path), num_labels=5, rng_seed=7)
    assert params["classifier"]["kernel"].shape == (32, 5)
    np.testing.assert_array_equal(params["pooler"]["kernel"],
                                  torch_model.pooler.dense.weight.detach().numpy().T)
    _, same_seed = load_hf_checkpoint(str(tmp_path), num_labels=5, rng_seed=7)
    _, other_seed = load_hf_checkpoint(str(tmp_path), num_labels=5, rng_seed=8)
    np.testing.assert_array_equal(same_seed["classifier"]["kernel"], params["classifier"]["kernel"])
    assert not np.allclose(other_seed["classifier"]["kernel"], params["classifier"]["kernel"])

    # features = tanh(pooler(h[:, 0])) = HF's pooler_output.
    ids, mask, types, _ = _batch(model_type)
    ref = torch_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      token_type_ids=None if types is None else torch.from_numpy(types))
    out = BertClassifier(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                                       None if types is None else jnp.asarray(types))
    _assert_close(np.asarray(out.features), ref.pooler_output.detach().numpy())


def test_missing_unused_and_mismatched_tensors(tmp_path, caplog):
    torch_model = _torch_model("bert")
    torch_model.save_pretrained(tmp_path)
    path = str(tmp_path / "model.safetensors")
    tensors = safetensors.numpy.load_file(path)

    with pytest.raises(ValueError, match="num_labels=4 but the checkpoint's classifier has 3"):
        load_hf_checkpoint(str(tmp_path), num_labels=4)

    extra = dict(tensors, **{"cls.predictions.bias": np.zeros(100, np.float32)})
    safetensors.numpy.save_file(extra, path)
    with caplog.at_level(logging.INFO, logger="tracin_jax.models.hf_convert"):
        load_hf_checkpoint(str(tmp_path))
    assert "1 checkpoint tensors unused" in caplog.text and "cls.predictions.bias" in caplog.text

    missing = {k: v for k, v in tensors.items()
               if k not in ("bert.encoder.layer.1.output.dense.weight",
                            "bert.embeddings.LayerNorm.bias")}
    safetensors.numpy.save_file(missing, path)
    with pytest.raises(ValueError, match="2 required tensors missing") as err:
        load_hf_checkpoint(str(tmp_path))
    assert "bert.encoder.layer.1.output.dense.weight" in str(err.value)
    assert "bert.embeddings.LayerNorm.bias" in str(err.value)

    wrong = dict(tensors, **{"bert.encoder.layer.0.intermediate.dense.weight":
                             np.zeros((36, 32), np.float32)})
    safetensors.numpy.save_file(wrong, path)
    with pytest.raises(ValueError, match="intermediate.dense.weight: \\(32, 36\\)"):
        load_hf_checkpoint(str(tmp_path))


def test_rejects_other_model_types(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="'gpt2'"):
        load_hf_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_checkpoint(str(tmp_path), num_labels=2)


def test_saved_checkpoint_of_fresh_init_round_trips(tmp_path):
    from tracin_jax.models.bert import BertConfig
    config = BertConfig(model_type="roberta", **TINY, type_vocab_size=1, pad_token_id=1,
                        layer_norm_eps=1e-5)
    params = init_params(BertClassifier(config), jax.random.PRNGKey(0), 8)
    save_hf_checkpoint(str(tmp_path), config, params)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["architectures"] == ["RobertaForSequenceClassification"]
    loaded_config, loaded = load_hf_checkpoint(str(tmp_path))
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
