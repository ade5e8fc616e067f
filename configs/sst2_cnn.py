"""The paper's text CNN (sec. 3.2 / Table 1: embedding 128, conv1d k=5 x2, conv1d k=1,
global max pool, dense; biases present; randomly initialised) on SST-2 with a word
vocabulary: the per-layer cancellation study at CPU scale (configs/agnews_cnn.py is the
paper's setting).

Data: TFDS ``glue/sst2`` (field ``sentence``, labels negative / positive; train split
``train``, eval split ``validation``), 5,000 training sentences. Local CSV files with
columns ``text,label`` (0 = negative, 1 = positive) instead:
    --config.data.source=files --config.data.files.train=PATH --config.data.files.eval=PATH

    tracin-jax train --config configs/sst2_cnn.py --workdir experiments/out/sst2_cnn
"""
from tracin_jax.config import base_config, use_cnn, use_sst2


def get_config():
    cfg = base_config()
    cfg.name = "sst2_cnn"
    use_sst2(cfg, max_train=5_000)
    cfg.tokenizer.max_length = 48
    use_cnn(cfg, vocab_size=10000, min_freq=1, embed_dim=128,
            filters=10,  # sec. 3.2: "filter size 10"
            kernel_sizes=(5, 5, 1), dropout_rate=0.0)
    # The paper trains with SGD (momentum 0.9, lr 2e-2, 10 epochs on AG News); on 5,000 SST-2
    # phrases that reaches 0.62 dev accuracy in 4 epochs, AdamW 1e-3 reaches 0.75.
    cfg.train.optimizer = "adamw"
    cfg.train.lr = 1e-3
    cfg.train.epochs = 4  # 10 on AG News; 4 keeps CPU retraining cheap (loss not yet saturated)
    cfg.train.batch_size = 32
    cfg.train.checkpoint_every_epochs = 1  # 4 checkpoints (the paper: 3-5)
    cfg.test_points.per_class = 5
    return cfg
