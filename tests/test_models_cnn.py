"""The paper's text CNN: brute-force numpy reference, padding, gradients at padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracin_jax.models import CNNClassifier, CNNConfig, build_model, init_params

CONFIG = CNNConfig(vocab_size=100, embed_dim=8, filters=16, num_labels=4, dropout_rate=0.5)
SEQ = 12


@pytest.fixture(scope="module")
def setup():
    model = CNNClassifier(CONFIG)
    params = init_params(model, jax.random.PRNGKey(0), SEQ)
    # Non-zero biases, so that masking (not zero biases) is what keeps padding out.
    params = jax.tree.map(lambda x: x + 0.1, params)
    return model, params


def _batch(lengths=(12, 7, 3), seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, size=(len(lengths), SEQ))
    mask = np.arange(SEQ)[None, :] < np.array(lengths)[:, None]
    return jnp.asarray(np.where(mask, ids, 0), jnp.int32), jnp.asarray(mask, jnp.int32)


def _reference_features(params, ids):
    """numpy: embedding, three SAME conv1d + relu on the unpadded sequence, max pool."""
    h = np.asarray(params["embeddings"]["word_embeddings"]["embedding"])[ids]  # [L, D]
    for j in range(3):
        kernel = np.asarray(params[f"conv_{j}"]["kernel"])  # [k, in, out]
        k = kernel.shape[0]
        padded = np.pad(h, (((k - 1) // 2, k // 2), (0, 0)))
        h = np.stack([np.einsum("ki,kio->o", padded[t:t + k], kernel) for t in range(len(h))])
        h = np.maximum(h + np.asarray(params[f"conv_{j}"]["bias"]), 0.0)
    return h.max(axis=0)


def test_matches_numpy_reference_and_shapes(setup):
    model, params = setup
    ids, mask = _batch()
    out = model.apply({"params": params}, ids, mask)
    assert out.logits.shape == (3, 4) and out.features.shape == (3, 16)
    assert out.logits.dtype == jnp.float32
    assert params["conv_0"]["kernel"].shape == (5, 8, 16)
    assert params["conv_2"]["kernel"].shape == (1, 16, 16)
    assert params["embeddings"]["word_embeddings"]["embedding"].shape == (100, 8)
    for row, length in enumerate((12, 7, 3)):
        expected = _reference_features(params, np.asarray(ids[row, :length]))
        np.testing.assert_allclose(out.features[row], expected, rtol=1e-5, atol=1e-6)
    expected_logits = out.features @ params["classifier"]["kernel"] + params["classifier"]["bias"]
    np.testing.assert_allclose(out.logits, expected_logits, rtol=1e-5, atol=1e-6)


def test_padding_invariance_whatever_ids_sit_in_the_padding(setup):
    model, params = setup
    ids, _ = _batch(lengths=(5,))
    short = model.apply({"params": params}, ids[:, :5], jnp.ones((1, 5), jnp.int32))
    garbage = jnp.asarray(np.random.default_rng(1).integers(0, 100, size=(1, SEQ - 5)), jnp.int32)
    padded_ids = jnp.concatenate([ids[:, :5], garbage], axis=1)
    mask = jnp.asarray(np.arange(SEQ)[None, :] < 5, jnp.int32)
    long = model.apply({"params": params}, padded_ids, mask)
    np.testing.assert_allclose(long.logits, short.logits, rtol=1e-6, atol=1e-6)


def test_gradient_at_padding_is_exactly_zero(setup):
    model, params = setup
    ids, mask = _batch()
    embeds = model.apply({"params": params}, ids, method="embed_words")

    def loss(e):
        return model.apply({"params": params}, None, mask, inputs_embeds=e).logits.sum()

    grads = np.asarray(jax.grad(loss)(embeds))
    pad = np.asarray(mask) == 0
    assert np.all(grads[pad] == 0.0)
    assert np.abs(grads[~pad]).max() > 0


def test_all_padding_row_and_token_types(setup):
    model, params = setup
    ids, mask = _batch(lengths=(12, 0, 3))
    out = model.apply({"params": params}, ids, mask)
    np.testing.assert_array_equal(out.features[1], 0.0)
    assert np.isfinite(out.logits).all()
    with_types = model.apply({"params": params}, ids, mask, jnp.ones_like(ids))
    np.testing.assert_array_equal(with_types.logits, out.logits)  # token_type_ids ignored


def test_dropout_only_in_training_mode(setup):
    model, params = setup
    ids, mask = _batch()

    def run(seed, deterministic):
        return model.apply({"params": params}, ids, mask, deterministic=deterministic,
                           rngs={"dropout": jax.random.PRNGKey(seed)}).logits

    np.testing.assert_array_equal(run(1, True), run(2, True))
    assert not np.allclose(run(1, False), run(2, False), atol=1e-4)


def test_build_model_cnn():
    model = build_model({"kind": "cnn", "vocab_size": 50, "num_labels": 2, "filters": 6,
                         "embed_dim": 4, "kernel_sizes": [3, 3, 1]})
    params = init_params(model, jax.random.PRNGKey(0), 6)
    assert params["conv_1"]["kernel"].shape == (3, 6, 6)
    assert model.config.kernel_sizes == (3, 3, 1)
    with pytest.raises(ValueError, match="kernel_sizes"):
        CNNConfig(vocab_size=10, num_labels=2, kernel_sizes=(5, 0))
