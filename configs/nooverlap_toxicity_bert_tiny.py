"""No-word-overlap experiment on Toxicity (paper sec. 5, appendix J; Table 4 lower block).

Toxicity on BERT-small with the paper's settings (configs/toxicity_bert_tiny.py), plus:
each test point ranks only the 5,000 training examples with the lowest TF-IDF cosine to
it, and the word embedding is frozen in training and in every retraining. Methods:
tracin_we, tracin_we_noc, tracin_common, tracin_last.

    python experiments/nooverlap.py --config configs/nooverlap_toxicity_bert_tiny.py \
        --out runs/nooverlap_toxicity
"""
from pathlib import Path

from tracin_jax.analysis.nooverlap import NOOVERLAP_METHODS, nooverlap_defaults
from tracin_jax.config import load_config


def get_config():
    cfg = load_config(Path(__file__).with_name("toxicity_bert_tiny.py"))  # data, model, training
    cfg.name = "nooverlap_toxicity_bert_tiny"
    cfg.train.freeze_word_embeddings = True  # appendix J: frozen in training and retraining
    cfg.grads.k = 0  # exact per-token vectors: tracin_we, tracin_we_noc, tracin_common
    cfg.nooverlap = nooverlap_defaults()
    cfg.nooverlap.num_candidates = 5000  # of 50,000 training sentences
    cfg.test_points.per_class = 20  # 40 test points (20 toxic, 20 not)
    cfg.sweep.methods = NOOVERLAP_METHODS  # with the random control, drawn from the candidates
    cfg.sweep.k_grid = tuple(range(10, 101, 10))
    cfg.sweep.seeds = tuple(range(10))
    cfg.sweep.mislabel.enabled = False
    return cfg
