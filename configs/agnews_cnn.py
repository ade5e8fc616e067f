"""The paper's CNN on AG News for the per-layer study (sec. 3.2 / Table 1): embedding 128,
conv1d k=5 x2, conv1d k=1, global max pool, dense; biases present; word vocabulary."""
from tracin_jax.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "agnews_cnn"
    cfg.data.source = "tfds"
    cfg.data.name = "ag_news_subset"
    cfg.data.train_split = "train"
    cfg.data.eval_split = "test"
    cfg.data.text_field = "description"
    cfg.data.label_field = "label"
    cfg.data.max_train = 50000
    cfg.data.max_eval = 20000
    cfg.tokenizer.kind = "word"
    cfg.tokenizer.vocab_size = 25000
    cfg.tokenizer.min_freq = 2
    cfg.model.kind = "cnn"
    cfg.model.embed_dim = 128
    cfg.model.filters = 128
    cfg.model.kernel_sizes = (5, 5, 1)
    cfg.train.optimizer = "sgd"
    cfg.train.momentum = 0.9
    cfg.train.lr = 2e-2
    cfg.train.epochs = 10
    cfg.train.batch_size = 32
    cfg.train.checkpoint_every_epochs = 2
    return cfg
