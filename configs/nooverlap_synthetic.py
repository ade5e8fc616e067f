"""The no-word-overlap experiment at CPU scale, on the embedded synthetic corpus.

Same protocol as configs/nooverlap_toxicity_bert_tiny.py (lowest-TF-IDF candidates,
frozen word embedding, tracin_we / tracin_we_noc / tracin_common / tracin_last) on the
demo's tiny BERT: minutes on a laptop CPU.

    python experiments/nooverlap.py --config configs/nooverlap_synthetic.py \
        --out experiments/out/nooverlap_synthetic
"""
from tracin_jax.analysis.nooverlap import NOOVERLAP_METHODS, nooverlap_defaults
from tracin_jax.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "nooverlap_synthetic"
    cfg.data.source = "synthetic"
    cfg.data.synthetic.num_classes = 2  # sports vs science
    cfg.data.synthetic.num_train = 2000
    cfg.data.synthetic.num_eval = 400
    cfg.tokenizer.kind = "word"
    cfg.tokenizer.max_length = 32
    cfg.model.kind = "bert"
    cfg.model.hidden_size = 64
    cfg.model.num_hidden_layers = 2
    cfg.model.num_attention_heads = 2
    cfg.model.intermediate_size = 128
    cfg.model.max_position_embeddings = 64
    cfg.model.hidden_dropout_prob = 0.0
    cfg.model.attention_probs_dropout_prob = 0.0
    cfg.train.optimizer = "adamw"  # as configs/demo.py: SGD leaves a from-scratch BERT at chance
    cfg.train.lr = 1e-3
    cfg.train.epochs = 3
    cfg.train.freeze_word_embeddings = True
    cfg.train.checkpoint_every_epochs = 1
    cfg.grads.k = 0
    cfg.grads.shard_size = 512
    cfg.nooverlap = nooverlap_defaults()
    cfg.nooverlap.num_candidates = 500  # a quarter of the training set, as 5,000 of 50,000 is a tenth
    cfg.test_points.per_class = 4
    cfg.sweep.methods = NOOVERLAP_METHODS  # with the random control, drawn from the candidates
    cfg.sweep.k_grid = (10, 20, 40)
    cfg.sweep.seeds = (0, 1, 2)
    cfg.sweep.heldout_size = 200
    cfg.sweep.mislabel.enabled = False
    return cfg
