"""MNLI (tfds glue/mnli, premise/hypothesis pairs, validation_matched) on BERT-base
(a Hugging Face `bert-base-uncased` directory). Paper: full training set, SGD
momentum 0.9; 30 test points (10 per class); k in {20, ..., 5000}."""
from tracin_jax.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "mnli_bert_base"
    cfg.data.source = "tfds"
    cfg.data.name = "glue/mnli"
    cfg.data.train_split = "train"
    cfg.data.eval_split = "validation_matched"
    cfg.data.text_field = "premise"
    cfg.data.pair_field = "hypothesis"
    cfg.data.label_field = "label"
    cfg.data.max_train = None
    cfg.data.max_eval = None
    cfg.tokenizer.kind = "bert"
    cfg.model.kind = "bert"
    cfg.model.hf_dir = "checkpoints/bert-base-uncased"
    cfg.train.optimizer = "sgd"
    cfg.train.momentum = 0.9
    cfg.train.lr = 2e-3
    cfg.train.epochs = 3
    cfg.train.batch_size = 64
    cfg.train.checkpoint_every_epochs = 1
    return cfg
