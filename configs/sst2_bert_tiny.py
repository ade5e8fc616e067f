"""SST-2 (GLUE) on a 2-layer BERT (hidden 128, 2 heads) trained from scratch, with the
MiniLM WordPiece vocabulary (checkpoints/minilm/vocab.txt, fetched by tools/fetch_minilm.sh):
the paper's BERT-small shape at CPU cost.

Data: TFDS ``glue/sst2`` (field ``sentence``, labels negative / positive; train split
``train``, eval split ``validation``), 5,000 training sentences. Local CSV files with
columns ``text,label`` (0 = negative, 1 = positive) instead:
    --config.data.source=files --config.data.files.train=PATH --config.data.files.eval=PATH

AdamW (as configs/demo.py: SGD leaves a randomly initialised post-LN BERT near chance).
    tracin-jax train --config configs/sst2_bert_tiny.py --workdir experiments/out/sst2_bert_tiny
"""
from tracin_jax.config import base_config, use_bert_from_scratch, use_sst2


def get_config():
    cfg = base_config()
    cfg.name = "sst2_bert_tiny"
    use_sst2(cfg, max_train=5_000)
    cfg.tokenizer.kind = "bert"
    cfg.tokenizer.path = "checkpoints/minilm"  # WordPiece vocab only; the model is random
    cfg.tokenizer.max_length = 48  # SST-2 dev: 99% of sentences <= 42 words
    use_bert_from_scratch(cfg, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=512, max_position_embeddings=64, dropout=0.1)
    cfg.train.optimizer = "adamw"
    cfg.train.lr = 5e-4
    cfg.train.weight_decay = 0.01
    cfg.train.schedule = "linear"
    cfg.train.warmup_steps = 50
    cfg.train.epochs = 3  # dev accuracy 0.74 / 0.76 / 0.76 / 0.75 after epochs 1-4: stop at 3
    cfg.train.batch_size = 32
    cfg.train.checkpoint_every_epochs = 1  # 3 checkpoints (the paper: 3-5)
    cfg.test_points.per_class = 5  # 10 test points
    return cfg
