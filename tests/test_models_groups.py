"""Parameter groups partition every parameter; bias detection; selection."""
import jax
import numpy as np
import pytest

from tracin_jax.models import (WORD_EMBEDDING_PATH, BertClassifier, BertConfig, CNNClassifier,
                               CNNConfig, init_params, is_bias, parameter_groups, select)

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, num_labels=3)


def _paths(params):
    return {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module", params=["bert", "roberta", "cnn"])
def params(request):
    if request.param == "cnn":
        model = CNNClassifier(CNNConfig(vocab_size=100, embed_dim=8, filters=16, num_labels=3))
    else:
        extra = {"type_vocab_size": 1, "pad_token_id": 1} if request.param == "roberta" else {}
        model = BertClassifier(BertConfig(model_type=request.param, **TINY, **extra))
    return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), 8))


def test_groups_partition_all_parameters(params):
    groups = parameter_groups(params)
    members = [p for paths in groups.values() for p in paths]
    assert len(members) == len(set(members))  # disjoint
    assert set(members) == _paths(params)  # complete
    assert groups["word_embedding"] == [WORD_EMBEDDING_PATH]
    assert groups["classifier"] == [("classifier", "bias"), ("classifier", "kernel")]
    if "encoder" in params:
        assert list(groups) == ["word_embedding", "embeddings", "layer_0", "layer_1", "pooler",
                                "classifier"]
        assert {p[1] for p in groups["embeddings"]} == {
            "position_embeddings", "token_type_embeddings", "layer_norm"}
        assert len(groups["layer_1"]) == 16  # 6 Dense (kernel, bias) + 2 LayerNorm
        assert all(p[:2] == ("encoder", "layer_1") for p in groups["layer_1"])
    else:
        assert list(groups) == ["word_embedding", "conv_0", "conv_1", "conv_2", "classifier"]


def test_is_bias():
    assert is_bias(("classifier", "bias"))
    assert is_bias(("encoder", "layer_0", "attention_layer_norm", "bias"))
    assert not is_bias(("encoder", "layer_0", "attention_layer_norm", "scale"))
    assert not is_bias(("conv_0", "kernel"))
    assert not is_bias(WORD_EMBEDDING_PATH)


def test_select():
    model = BertClassifier(BertConfig(**TINY))
    params = init_params(model, jax.random.PRNGKey(0), 8)
    weights = select(params, "layer_0")
    assert len(weights) == 8 and not any(is_bias(p) for p in weights)
    assert ("encoder", "layer_0", "output_layer_norm", "scale") in weights
    with_bias = select(params, "layer_0", include_bias=True)
    assert len(with_bias) == 16
    np.testing.assert_array_equal(with_bias[("encoder", "layer_0", "intermediate", "kernel")],
                                  params["encoder"]["layer_0"]["intermediate"]["kernel"])
    assert list(select(params, "classifier")) == [("classifier", "kernel")]
    with pytest.raises(ValueError, match="unknown parameter group 'layer_7'"):
        select(params, "layer_7")


def test_unknown_parameter_is_an_error():
    with pytest.raises(ValueError, match="adapter/kernel belongs to no known group"):
        parameter_groups({"adapter": {"kernel": np.zeros(2)}})
