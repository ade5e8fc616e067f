"""AG News (tfds ag_news_subset, field `description`) on the paper's BERT-small
(google/bert_uncased_L-2_H-128_A-2, a Hugging Face checkpoint directory).
Paper sec. 5 / appendix K: 50,000 train, 20,000 val, SGD momentum 0.9, lr 2e-2, 10 epochs."""
from tracin_jax.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "agnews_bert_tiny"
    cfg.data.source = "tfds"
    cfg.data.name = "ag_news_subset"
    cfg.data.train_split = "train"
    cfg.data.eval_split = "test"
    cfg.data.text_field = "description"
    cfg.data.label_field = "label"
    cfg.data.max_train = 50000
    cfg.data.max_eval = 20000
    cfg.tokenizer.kind = "bert"
    cfg.model.kind = "bert"
    cfg.model.hf_dir = "checkpoints/bert_uncased_L-2_H-128_A-2"
    cfg.train.optimizer = "sgd"
    cfg.train.momentum = 0.9
    cfg.train.lr = 2e-2
    cfg.train.epochs = 10
    cfg.train.batch_size = 32
    cfg.train.checkpoint_every_epochs = 2
    return cfg
