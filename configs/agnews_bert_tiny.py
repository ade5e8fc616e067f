"""AG News (tfds ag_news_subset, field `description`) on the paper's BERT-small
(google/bert_uncased_L-2_H-128_A-2, a Hugging Face checkpoint directory).
Paper sec. 5 / appendix K: 50,000 train, 20,000 val, SGD momentum 0.9, lr 2e-2, 10 epochs."""
from tracin_jax.config import base_config, use_hf_checkpoint, use_paper_sgd, use_tfds


def get_config():
    cfg = base_config()
    cfg.name = "agnews_bert_tiny"
    use_tfds(cfg, "ag_news_subset", train_split="train", eval_split="test",
             text_field="description", label_field="label", max_train=50000, max_eval=20000)
    use_hf_checkpoint(cfg, "bert", "checkpoints/bert_uncased_L-2_H-128_A-2")
    use_paper_sgd(cfg, lr=2e-2, epochs=10, batch_size=32, checkpoint_every_epochs=2)
    return cfg
