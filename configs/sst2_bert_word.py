"""SST-2 (GLUE) on the word-vocabulary BERT L2-H128 of the results (tools/bench_retrain.py):
configs/sst2_bert_tiny.py's model and training, but a word-level vocabulary built from the
training split (at most 5,000 words; no external vocabulary file, nothing to fetch).

Data: TFDS ``glue/sst2`` (field ``sentence``, labels negative / positive; train split
``train``, eval split ``validation``), 5,000 training sentences. Local CSV files with
columns ``text,label`` (0 = negative, 1 = positive) instead:
    --config.data.source=files --config.data.files.train=PATH --config.data.files.eval=PATH

    tracin-jax train --config configs/sst2_bert_word.py --workdir experiments/out/sst2_bert_word
"""
from tracin_jax.config import base_config, use_bert_from_scratch, use_sst2


def get_config():
    cfg = base_config()
    cfg.name = "sst2_bert_word"
    use_sst2(cfg, max_train=5_000)
    cfg.tokenizer.kind = "word"  # built from the training split (the run saves it to its workdir)
    cfg.tokenizer.path = None
    cfg.tokenizer.vocab_size = 5000  # as tools/bench_retrain.py
    cfg.tokenizer.min_freq = 1
    cfg.tokenizer.max_length = 48  # SST-2 dev: 99% of sentences <= 42 words
    use_bert_from_scratch(cfg, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=512, max_position_embeddings=64, dropout=0.1)
    cfg.train.optimizer = "adamw"
    cfg.train.lr = 5e-4
    cfg.train.weight_decay = 0.01
    cfg.train.schedule = "linear"
    cfg.train.warmup_steps = 50
    cfg.train.epochs = 3
    cfg.train.batch_size = 32
    cfg.train.checkpoint_every_epochs = 1  # 3 checkpoints (the paper: 3-5)
    cfg.test_points.per_class = 5  # 10 test points
    return cfg
