"""A seeded synthetic topic-classification corpus with planted, known structure.

Every example is a bag of words of length `U[min_length, max_length]` built from
three vocabularies:

- class keywords: `keywords_per_class` readable words per class ("goal", "team"
  for 'sports'). A normal example of class c draws each word from c's keywords
  with probability `keyword_prob` (at least one keyword), else from the filler.
- filler: `num_filler` neutral pseudo-words ("bako", "demu") with Zipf frequencies
  `p(rank r) ∝ (r + 1)^-zipf_exponent`; the most frequent act like stop words.
- triggers: `num_triggers` tokens, trigger t assigned class `t % num_classes`.
  Trigger t occurs in exactly `trigger_train_examples` training examples, made of
  filler plus the trigger (once or twice) and no keyword, labelled with t's class:
  the trigger is their only class evidence. Its `trigger_eval_examples` eval
  points are built the same way. Removing t's training examples leaves the model
  no evidence for those eval points, so their class probability drops to about
  the prior (the planted signal for case-deletion tests).
- trigger opponents: `trigger_opponent_examples` more training examples per
  trigger (0, the default, plants none), built like its examples (filler plus the
  trigger, no keyword) but labelled with a conflicting class, `(t's class + 1) %
  num_classes`. The trigger is the only class evidence of both groups, so its eval
  points get a gold-class probability below 1 (about the share of t's examples
  among all examples with the trigger): the conflicting examples are their planted,
  word-level opponents, and removing them raises that probability (DEL− > 0).

A flipped group of `round(flip_fraction * num_train)` training examples are normal
examples of `flip_source` (its keywords) labelled `flip_target`: a mislabelled
cluster (appendix A). The rest of each split is class-balanced normal examples.
Row order is shuffled; `ids` = row index, and the ground truth names rows by id.
"""
from __future__ import annotations

import itertools
import logging
from typing import NamedTuple

import ml_collections
import numpy as np

from tracin_jax.data.dataset import TextDataset

log = logging.getLogger(__name__)

# Readable class names and keywords; classes past these get generated names.
_CLASS_KEYWORDS = {
    "sports": ("goal", "team", "match", "coach", "season", "league", "player", "score"),
    "science": ("atom", "cell", "physics", "experiment", "theory", "molecule", "laboratory", "genome"),
    "business": ("market", "profit", "stock", "company", "trade", "bank", "investor", "revenue"),
    "politics": ("vote", "election", "senate", "policy", "minister", "party", "campaign", "parliament"),
    "health": ("doctor", "patient", "vaccine", "hospital", "disease", "therapy", "nurse", "clinic"),
    "travel": ("flight", "hotel", "beach", "passport", "tourist", "airport", "luggage", "cruise"),
    "music": ("guitar", "concert", "album", "singer", "melody", "drummer", "chorus", "orchestra"),
    "food": ("recipe", "bread", "cheese", "chef", "soup", "garlic", "pasta", "bakery"),
}
_TRIGGERS = ("zorp", "quix", "blorf", "snarg", "vexil", "krazz", "wubble", "glarm", "thrip",
             "yonk", "plibb", "draxx")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


class SyntheticCorpus(NamedTuple):
    train: TextDataset
    eval: TextDataset
    ground_truth: dict  # JSON-serialisable; see make_synthetic


def default_synthetic_config() -> ml_collections.ConfigDict:
    """Defaults sized for a CPU demo (~2,000 train / 400 eval, 8-24 words)."""
    return ml_collections.ConfigDict(dict(
        seed=0,
        num_classes=4,
        num_train=2000,
        num_eval=400,
        min_length=8,
        max_length=24,
        keywords_per_class=6,
        keyword_prob=0.3,  # share of a normal example's words that are class keywords
        num_filler=150,
        zipf_exponent=1.0,
        num_triggers=6,
        trigger_train_examples=25,
        trigger_eval_examples=5,
        trigger_opponent_examples=0,  # per trigger: its token + filler, labelled with another class
        flip_fraction=0.03,
        flip_source=0,
        flip_target=1,
    ))


def class_vocabulary(num_classes: int, keywords_per_class: int) -> tuple[list[str], list[list[str]]]:
    """Class names and `keywords_per_class` keywords per class (readable, then generated)."""
    names, keywords = [], []
    for c in range(num_classes):
        if c < len(_CLASS_KEYWORDS):
            name = list(_CLASS_KEYWORDS)[c]
            words = list(_CLASS_KEYWORDS[name])
        else:
            name, words = f"class{c}", []
        words += [f"{name}kw{j}" for j in range(len(words), keywords_per_class)]
        names.append(name)
        keywords.append(words[:keywords_per_class])
    return names, keywords


def filler_words(num_filler: int) -> list[str]:
    """`num_filler` distinct pseudo-words (consonant-vowel syllables), fixed for every seed."""
    syllables = [c + v for c, v in itertools.product(_CONSONANTS, _VOWELS)]
    words = ["".join(p) for p in itertools.product(syllables, repeat=2)]
    if num_filler > len(words):
        raise ValueError(f"num_filler={num_filler} exceeds the {len(words)} available filler words")
    order = np.random.default_rng(1234).permutation(len(words))[:num_filler]
    return [words[i] for i in order]


def trigger_tokens(num_triggers: int) -> list[str]:
    return [_TRIGGERS[t] if t < len(_TRIGGERS) else f"trigger{t}" for t in range(num_triggers)]


def _check_config(cfg) -> None:
    if cfg.num_classes < 2:
        raise ValueError(f"synthetic.num_classes must be >= 2, got {cfg.num_classes}")
    if not 1 <= cfg.min_length <= cfg.max_length:
        raise ValueError(f"synthetic lengths need 1 <= min_length <= max_length, got "
                         f"{cfg.min_length}, {cfg.max_length}")
    if not 0.0 <= cfg.keyword_prob <= 1.0 or not 0.0 <= cfg.flip_fraction < 1.0:
        raise ValueError(f"synthetic.keyword_prob={cfg.keyword_prob} must be in [0, 1] and "
                         f"flip_fraction={cfg.flip_fraction} in [0, 1)")
    for key in ("flip_source", "flip_target"):
        if not 0 <= cfg[key] < cfg.num_classes:
            raise ValueError(f"synthetic.{key}={cfg[key]} not in [0, {cfg.num_classes})")
    if cfg.get("trigger_opponent_examples", 0) < 0:
        raise ValueError(f"synthetic.trigger_opponent_examples must be >= 0, got "
                         f"{cfg.trigger_opponent_examples}")
    if cfg.flip_source == cfg.flip_target:
        raise ValueError(f"synthetic.flip_source and flip_target are both {cfg.flip_source}")


def make_synthetic(cfg: ml_collections.ConfigDict) -> SyntheticCorpus:
    """Builds the corpus for `cfg` (fields of `default_synthetic_config`), deterministic per seed.

    Returns `SyntheticCorpus(train, eval, ground_truth)`; `ground_truth` holds
    `label_names`, `class_keywords` ([C] lists), `filler_words`, `triggers` (list of
    `{token, label, train_ids, eval_ids, opponent_label, opponent_train_ids}`:
    `train_ids` are the planted proponents of `eval_ids`, `opponent_train_ids` (empty
    without them) its planted opponents), `flipped_train_ids`, `flipped_true_labels`,
    `flip_target` and `seed`, all plain lists/ints/strings.
    """
    _check_config(cfg)
    n_classes = int(cfg.num_classes)
    label_names, keywords = class_vocabulary(n_classes, int(cfg.keywords_per_class))
    filler = filler_words(int(cfg.num_filler))
    triggers = trigger_tokens(int(cfg.num_triggers))
    n_opponents = int(cfg.get("trigger_opponent_examples", 0))
    clash = (set(itertools.chain(*keywords)) | set(triggers)) & set(filler)
    if clash or len(set(triggers)) != len(triggers):
        raise ValueError(f"synthetic vocabularies overlap: {sorted(clash)}")
    trigger_labels = [t % n_classes for t in range(len(triggers))]
    opponent_labels = [(c + 1) % n_classes for c in trigger_labels]

    ranks = np.arange(1, len(filler) + 1, dtype=np.float64)
    filler_p = ranks ** -float(cfg.zipf_exponent)
    filler_p /= filler_p.sum()
    rng = np.random.default_rng(int(cfg.seed))

    def words_of_length() -> list[str]:
        length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
        return [filler[i] for i in rng.choice(len(filler), size=length, p=filler_p)]

    def normal_example(c: int) -> str:
        words = words_of_length()
        n_kw = max(1, int(rng.binomial(len(words), cfg.keyword_prob)))
        for pos in rng.choice(len(words), size=n_kw, replace=False):
            words[pos] = keywords[c][int(rng.integers(len(keywords[c])))]
        return " ".join(words)

    def trigger_example(t: int) -> str:
        words = words_of_length()
        n_trig = min(len(words), 1 + int(rng.integers(2)))  # once or twice
        for pos in rng.choice(len(words), size=n_trig, replace=False):
            words[pos] = triggers[t]
        return " ".join(words)

    def build_split(n_total: int, per_trigger: int, per_opponent: int, n_flipped: int, split: str):
        """Rows as (text, label, kind), kind = ('trigger', t) | ('opponent', t) | ('flip',) |
        ('normal',)."""
        n_normal = n_total - (per_trigger + per_opponent) * len(triggers) - n_flipped
        if n_normal < n_classes:
            raise ValueError(f"synthetic {split}: {n_total} examples leave {n_normal} normal ones "
                             f"after triggers, opponents and flips; need at least "
                             f"num_classes={n_classes}")
        rows = []
        for t in range(len(triggers)):
            rows += [(trigger_example(t), trigger_labels[t], ("trigger", t)) for _ in range(per_trigger)]
        for t in range(len(triggers)):  # no draws without opponents: the corpus is as before
            rows += [(trigger_example(t), opponent_labels[t], ("opponent", t)) for _ in range(per_opponent)]
        rows += [(normal_example(cfg.flip_source), cfg.flip_target, ("flip",)) for _ in range(n_flipped)]
        for i in range(n_normal):
            c = i % n_classes
            rows.append((normal_example(c), c, ("normal",)))
        order = rng.permutation(len(rows))
        rows = [rows[i] for i in order]
        ds = TextDataset(texts=tuple(r[0] for r in rows), text_pairs=None,
                         labels=np.array([r[1] for r in rows], np.int32),
                         ids=np.arange(len(rows), dtype=np.int64),
                         label_names=tuple(label_names), name=f"synthetic:{split}")
        return ds, [r[2] for r in rows]

    n_flipped = int(round(cfg.flip_fraction * cfg.num_train))
    train, train_kinds = build_split(int(cfg.num_train), int(cfg.trigger_train_examples), n_opponents,
                                     n_flipped, "train")
    eval_, eval_kinds = build_split(int(cfg.num_eval), int(cfg.trigger_eval_examples), 0, 0, "eval")

    def ids_of(kinds, kind) -> list[int]:
        return [i for i, k in enumerate(kinds) if k == kind]

    flipped_ids = ids_of(train_kinds, ("flip",))
    ground_truth = {
        "seed": int(cfg.seed),
        "label_names": list(label_names),
        "class_keywords": keywords,
        "filler_words": filler,
        "triggers": [{"token": tok, "label": trigger_labels[t],
                      "train_ids": ids_of(train_kinds, ("trigger", t)),
                      "eval_ids": ids_of(eval_kinds, ("trigger", t)),
                      "opponent_label": opponent_labels[t],
                      "opponent_train_ids": ids_of(train_kinds, ("opponent", t))}
                     for t, tok in enumerate(triggers)],
        "flipped_train_ids": flipped_ids,
        "flipped_true_labels": [int(cfg.flip_source)] * len(flipped_ids),
        "flip_target": int(cfg.flip_target),
    }
    log.info("synthetic corpus (seed %d): %d train (%d trigger, %d trigger opponents, %d flipped), "
             "%d eval", cfg.seed, len(train), len(triggers) * cfg.trigger_train_examples,
             len(triggers) * n_opponents, n_flipped, len(eval_))
    return SyntheticCorpus(train=train, eval=eval_, ground_truth=ground_truth)
