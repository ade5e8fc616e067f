"""Wikipedia toxicity (tfds wikipedia_toxicity_subtypes, toxicity >= 0.5 -> toxic) on
BERT-small (google/bert_uncased_L-2_H-128_A-2). Paper: 50,000 train / 20,000 val,
SGD momentum 0.9, lr 2e-4, 20 epochs; 40 test points (20 per class)."""
from tracin_jax.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "toxicity_bert_tiny"
    cfg.data.source = "tfds"
    cfg.data.name = "wikipedia_toxicity_subtypes"
    cfg.data.train_split = "train"
    cfg.data.eval_split = "validation"
    cfg.data.text_field = "text"
    cfg.data.label_field = "toxicity"
    cfg.data.max_train = 50000
    cfg.data.max_eval = 20000
    cfg.tokenizer.kind = "bert"
    cfg.model.kind = "bert"
    cfg.model.hf_dir = "checkpoints/bert_uncased_L-2_H-128_A-2"
    cfg.train.optimizer = "sgd"
    cfg.train.momentum = 0.9
    cfg.train.lr = 2e-4
    cfg.train.epochs = 20
    cfg.train.batch_size = 32
    cfg.train.checkpoint_every_epochs = 4
    return cfg
