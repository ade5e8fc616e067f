"""The paper's CNN on AG News for the per-layer study (sec. 3.2 / Table 1): embedding 128,
conv1d k=5 x2, conv1d k=1, global max pool, dense; biases present; word vocabulary."""
from tracin_jax.config import base_config, use_cnn, use_paper_sgd, use_tfds


def get_config():
    cfg = base_config()
    cfg.name = "agnews_cnn"
    use_tfds(cfg, "ag_news_subset", train_split="train", eval_split="test",
             text_field="description", label_field="label", max_train=50000, max_eval=20000)
    use_cnn(cfg, vocab_size=25000, min_freq=2, embed_dim=128, filters=128, kernel_sizes=(5, 5, 1),
            dropout_rate=0.0)
    use_paper_sgd(cfg, lr=2e-2, epochs=10, batch_size=32, checkpoint_every_epochs=2)
    return cfg
