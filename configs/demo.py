"""The demo: the embedded synthetic corpus (planted keywords, triggers, flipped labels)
and a tiny BERT trained from scratch. Minutes on a laptop CPU.

AdamW rather than the paper's SGD: a post-LayerNorm BERT trained from scratch with
SGD stays at chance here; the pretrained-checkpoint configs keep SGD + momentum."""
from tracin_jax.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "demo"
    cfg.data.source = "synthetic"
    # 15 planted proponents per trigger: removing the top 5-20 of them is felt by the
    # trigger test points (with 25, the 5 left after k=20 still carry the prediction).
    cfg.data.synthetic.trigger_train_examples = 15
    # 5 planted opponents per trigger (its token + filler, labelled with another class):
    # they hold the trigger test points' gold probability down, and removing them
    # raises it (DEL- > 0).
    cfg.data.synthetic.trigger_opponent_examples = 5
    cfg.tokenizer.kind = "word"
    cfg.tokenizer.max_length = 32
    cfg.model.kind = "bert"
    cfg.model.hidden_size = 64
    cfg.model.num_hidden_layers = 2
    cfg.model.num_attention_heads = 2
    cfg.model.intermediate_size = 128
    cfg.model.max_position_embeddings = 64
    cfg.model.hidden_dropout_prob = 0.0
    cfg.model.attention_probs_dropout_prob = 0.0
    cfg.train.optimizer = "adamw"
    cfg.train.lr = 1e-3
    # 5 epochs: with 3, whether a retrained model learns a trigger against its opponents
    # varies from seed to seed more than the deletions move it.
    cfg.train.epochs = 5
    cfg.train.batch_size = 32
    cfg.train.checkpoint_every_epochs = 1  # 5 checkpoints, as the paper's 3-5 (appendix K)
    cfg.grads.k = 10
    cfg.grads.shard_size = 512
    return cfg
