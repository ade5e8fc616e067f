"""Toxicity on RoBERTa-base (a Hugging Face `roberta-base` directory); otherwise the
toxicity_bert_tiny settings (paper sec. 5, "Toxicity-Roberta")."""
from tracin_jax.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "toxicity_roberta_base"
    cfg.data.source = "tfds"
    cfg.data.name = "wikipedia_toxicity_subtypes"
    cfg.data.train_split = "train"
    cfg.data.eval_split = "validation"
    cfg.data.text_field = "text"
    cfg.data.label_field = "toxicity"
    cfg.data.max_train = 50000
    cfg.data.max_eval = 20000
    cfg.tokenizer.kind = "roberta"
    cfg.model.kind = "roberta"
    cfg.model.hf_dir = "checkpoints/roberta-base"
    cfg.model.pad_token_id = 1
    cfg.train.optimizer = "sgd"
    cfg.train.momentum = 0.9
    cfg.train.lr = 2e-4
    cfg.train.epochs = 20
    cfg.train.batch_size = 32
    cfg.train.checkpoint_every_epochs = 4
    return cfg
