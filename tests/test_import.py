"""Your model, your data: Hugging Face checkpoints written by transformers' PyTorch classes are
imported (each learning-rate source), pre-tokenised and text files attached, and the scores
through the CLI equal an independent PyTorch TracIn-WE (dense embedding-table gradients)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tracin_jax import cli  # noqa: E402
from tracin_jax.errors import DataError, UsageError  # noqa: E402
from tracin_jax.stages.imports import import_hf  # noqa: E402
from tracin_jax.store import GradientStore  # noqa: E402

VOCAB, LABELS, LRS = 60, 3, (0.1, 0.05)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]


def _checkpoints(root, model_type="bert"):
    """Two checkpoints of one small classifier, saved by transformers, with a tokenizer and a
    Trainer state (learning rates logged every 5 steps)."""
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=40, num_labels=LABELS,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if model_type == "bert":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**common))
    else:
        model = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
            **common, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1))
    dirs = []
    for step, scale in ((10, 0.0), (20, 0.3)):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn_like(p) * p.std().clamp(min=1e-3))
        d = root / f"checkpoint-{step}"
        model.save_pretrained(d)
        (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
        dirs.append(d)
    state = {"log_history": [{"step": s, "learning_rate": 0.1 - 0.0025 * s} for s in range(5, 25, 5)]}
    (root / "trainer_state.json").write_text(json.dumps(state))
    return dirs


def _rows(rng, n):
    rows = []
    for i in range(n):
        length = int(rng.integers(4, 12))
        ids = [2] + rng.integers(5, 5 + 12, length).tolist() + [3]  # a small vocabulary: shared tokens
        rows.append({"input_ids": ids, "label": int(i % LABELS)})
    return rows


def _torch_tracin_we(dirs, lrs, train_rows, test_rows):
    """Independent reference: Σ_c η_c ⟨∂ℓ(x')/∂E, ∂ℓ(x)/∂E⟩ with E the word-embedding table,
    from transformers' PyTorch model (dense V×d gradients)."""
    total = np.zeros((len(test_rows), len(train_rows)))
    for d, lr in zip(dirs, lrs):
        model = transformers.AutoModelForSequenceClassification.from_pretrained(d).eval()
        table = model.base_model.embeddings.word_embeddings.weight

        def grad(row):
            model.zero_grad()
            ids = torch.tensor([row["input_ids"]])
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
            torch.nn.functional.cross_entropy(out.logits, torch.tensor([row["label"]])).backward()
            return table.grad.detach().double().numpy().ravel().copy()

        test = np.stack([grad(r) for r in test_rows])
        train = np.stack([grad(r) for r in train_rows])
        total += lr * test @ train.T
    return total


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    dirs = _checkpoints(root)
    rng = np.random.default_rng(0)
    train_rows, test_rows = _rows(rng, 10), _rows(rng, 3)
    _write_jsonl(root / "train.jsonl", train_rows)
    _write_jsonl(root / "test.jsonl", test_rows)
    return root, dirs, train_rows, test_rows


def test_import_grads_matrix_equal_pytorch_reference(hf, tmp_path, capsys):
    root, dirs, train_rows, test_rows = hf
    run = tmp_path / "run"
    assert cli.main(["import", "--hf", *map(str, dirs), "--lr", ",".join(map(str, LRS)), "--out", str(run)]) == 0
    record = json.loads((run / "import.json").read_text())
    assert [c["step"] for c in record["checkpoints"]] == [10, 20] and record["lr_source"] == "given"
    for split, rows in (("train", "train.jsonl"), ("test", "test.jsonl")):
        assert cli.main(["grads", "--run", str(run), "--data", str(root / rows), "--split", split, "--k", "0",
                         "--dtype", "float32", "--out", str(tmp_path / split), "--no-progress"]) == 0
    assert cli.main(["score", "--method", "tracin_we", "--test", str(tmp_path / "test"),
                     "--train", str(tmp_path / "train"), "--matrix", str(tmp_path / "m.npy"),
                     "--no-progress"]) == 0
    capsys.readouterr()
    got = np.load(tmp_path / "m.npy")
    ids = json.loads((tmp_path / "m.ids.json").read_text())
    assert ids["test_ids"] == [0, 1, 2] and ids["train_ids"] == list(range(10))
    want = _torch_tracin_we(dirs, LRS, train_rows, test_rows)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # The same through the ranking path and the report (tokens decoded by the imported vocab.txt).
    assert cli.main(["score", "--method", "tracin_we", "--test", str(tmp_path / "test"), "--train",
                     str(tmp_path / "train"), "--run", str(run), "--top", "4", "--out", str(tmp_path / "s"),
                     "--no-progress"]) == 0
    row = json.loads((tmp_path / "s" / "scores.jsonl").read_text().splitlines()[0])
    assert row["score"] == pytest.approx(got[0].max(), rel=1e-5)
    assert any(t["token"].startswith("w") for t in row["top_tokens"])


def test_learning_rate_sources(hf, tmp_path):
    root, dirs, _, _ = hf
    # trainer_state.json: the rate logged at the checkpoint's step (10, 20 are logged).
    rec = import_hf(dirs, tmp_path / "a", trainer_state=root / "trainer_state.json")
    assert [c["learning_rate"] for c in rec["checkpoints"]] == pytest.approx([0.075, 0.05])
    for d, lr in zip(dirs, (0.3, 0.2)):
        (d / "lr.txt").write_text(f"{lr}\n")
    try:
        rec = import_hf(dirs, tmp_path / "b")
        assert [c["learning_rate"] for c in rec["checkpoints"]] == [0.3, 0.2] and rec["lr_source"] == "lr.txt"
    finally:
        for d in dirs:
            (d / "lr.txt").unlink()
    with pytest.raises(UsageError, match="no learning rates"):
        import_hf(dirs, tmp_path / "c")
    with pytest.raises(UsageError, match="2 checkpoints"):
        import_hf(dirs, tmp_path / "d", lrs=[0.1])
    with pytest.raises(DataError, match="every learning rate is 0"):
        import_hf(dirs, tmp_path / "e", lrs=[0.0, 0.0])
    # directories listed out of order: steps and rates follow the directories
    rec = import_hf(dirs[::-1], tmp_path / "f", lrs=[0.05, 0.1])
    assert [(c["step"], c["learning_rate"]) for c in rec["checkpoints"]] == [(10, 0.1), (20, 0.05)]


def test_text_data_and_headerless_tsv(hf, tmp_path, capsys):
    """A text file (headerless TSV) read with the imported tokenizer; labels by class index."""
    root, dirs, _, _ = hf
    run = tmp_path / "run"
    import_hf(dirs, run, lrs=LRS)
    tsv = tmp_path / "news.tsv"
    tsv.write_text("w1 w2 w3\t0\nw4 w5 w1\t2\nw7 w7 w2 w9\t1\n")
    assert cli.main(["grads", "--run", str(run), "--data", str(tsv), "--split", "news", "--columns", "text,label",
                     "--k", "3", "--out", str(tmp_path / "g"), "--no-progress"]) == 0
    capsys.readouterr()
    store = GradientStore(tmp_path / "g")
    rec = store.load(10)
    assert store.num_examples == 3 and rec["label"].tolist() == [0, 2, 1]
    assert (rec["token_ids"][:, :3] >= 5).any()  # words, not [UNK]
    # the registry lets later stages find the split by name
    assert json.loads((run / "splits.json").read_text())["news"]["columns"] == ["text", "label"]
    # an unknown split name says how to attach one
    assert cli.main(["grads", "--run", str(run), "--split", "other", "--out", str(tmp_path / "h"),
                     "--no-progress"]) == 2
    assert "attach" in capsys.readouterr().err


def test_roberta_without_tokenizer_reads_ids_only(tmp_path, capsys):
    dirs = _checkpoints(tmp_path / "hf", "roberta")
    for d in dirs:
        (d / "vocab.txt").unlink()
    run = tmp_path / "run"
    import_hf(dirs, run, lrs=LRS)
    assert json.loads((run / "config.json").read_text())["tokenizer"]["kind"] == "ids"
    rows = tmp_path / "rows.jsonl"
    _write_jsonl(rows, [{"input_ids": [0, 7, 8, 2], "label": 1}, {"input_ids": [0, 9, 2], "label": 0}])
    assert cli.main(["grads", "--run", str(run), "--data", str(rows), "--split", "x", "--out",
                     str(tmp_path / "g"), "--no-progress"]) == 0
    text = tmp_path / "text.csv"
    text.write_text("text,label\nhello,0\n")
    assert cli.main(["grads", "--run", str(run), "--data", str(text), "--split", "y", "--out",
                     str(tmp_path / "h"), "--no-progress"]) == 1
    assert "pre-tokenised" in capsys.readouterr().err
