"""Every command README.md shows runs as written.

Each ```bash and ```python block of README.md is run, in order, in a directory holding a
copy of the demo's first stages (the demo config, trained for one epoch: the same example
ids) and a Hugging Face checkpoint directory with data
files for the "your model, your data" commands. ``tracin-jax`` lines run through the CLI
in-process, so a README command that no longer parses, names a removed option or fails
fails this test. Blocks marked ```shell need data or hardware the tests do not have.
The demo results between the README's demo markers must be exactly what
``tools/update_readme.py`` renders from ``docs/demo_summary.json``."""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from tracin_jax import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
# Sweeps in the test: one seed, one epoch, proponents only, no timing of the cost estimate
# (later overrides win).
FAST_SWEEP = ["--config.sweep.epochs=1", "--config.sweep.seeds=(1,)", "--config.sweep.signs=('+',)",
              "--config.sweep.heldout_size=100", "--no-measure"]


def _blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(README.read_text())


def _commands(text: str) -> list[str]:
    """The logical lines of a bash block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _load_update_readme():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "tools" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hf_model(root: Path) -> None:
    """my_model/: two checkpoints saved by transformers with a vocabulary and a Trainer
    state; my_data/: a headerless TSV of text and labels and a JSONL of text and labels."""
    from test_import import WORDS, _checkpoints

    _checkpoints(root / "my_model")
    rng = np.random.default_rng(0)
    words = [w for w in WORDS if w.startswith("w")][:15]

    def text():
        return " ".join(rng.choice(words, int(rng.integers(3, 9))))

    data = root / "my_data"
    data.mkdir()
    (data / "train.tsv").write_text("".join(f"{text()}\t{i % 3}\n" for i in range(12)))
    (data / "test.jsonl").write_text("".join(json.dumps({"text": text(), "label": i % 3}) + "\n" for i in range(3)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("readme")
    (root / "configs").symlink_to(ROOT / "configs")
    run = root / "runs" / "demo" / "run"
    assert cli.main(["train", "--config", str(ROOT / "configs" / "demo.py"), "--workdir", str(run),
                     "--config.train.epochs=1", "--no-progress", "-q"]) == 0
    for split in ("train", "test"):
        assert cli.main(["grads", "--run", str(run), "--split", split, "--out",
                         str(root / "runs" / "demo" / "grads" / split), "--no-progress", "-q"]) == 0
    _hf_model(root)
    return root


def _run_bash(text: str) -> None:
    for line in _commands(text):
        argv = shlex.split(line)
        assert argv[0] == "tracin-jax", f"README bash blocks may only hold tracin-jax commands: {line}"
        argv = argv[1:]
        if argv[:2] == ["sweep", "plan"]:
            argv += FAST_SWEEP
        if argv[:1] in (["train"], ["grads"], ["score"]) or argv[:2] == ["sweep", "run"]:
            argv.append("--no-progress")
        assert cli.main(argv) == 0, f"README command failed: {line}"


def test_readme_blocks_run_as_written(workspace, monkeypatch, capsys):
    blocks = _blocks()
    assert sum(kind == "bash" for kind, _ in blocks) >= 4 and any(kind == "python" for kind, _ in blocks)
    monkeypatch.chdir(workspace)
    for kind, text in blocks:
        if kind == "bash":
            _run_bash(text)
        else:
            exec(compile(text, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    # What the commands promise is there.
    assert (workspace / "runs/demo/scores_top20/report.html").exists()
    assert np.load(workspace / "runs/demo/scores_last.npy").shape[0] == 20
    assert (workspace / "runs/demo/sweep/report/table.md").exists()
    assert (workspace / "runs/mine/tracin_we.npy").exists()
    assert "(4, 2000)" in out


def test_readme_explain_pair_is_the_demo_example_pair():
    """The pair the README explains is the one its demo paragraph names."""
    summary = json.loads((ROOT / "docs" / "demo_summary.json").read_text())
    pair = summary["example_pair"]
    explain = [c for _, t in _blocks() for c in _commands(t) if c.startswith("tracin-jax explain")]
    assert explain and all(f"--test-id {pair['test_id']}" in c and f"--train-id {pair['train_id']}" in c
                           for c in explain)


def test_readme_demo_results_are_rendered_from_the_measured_summary():
    update = _load_update_readme()
    summary = json.loads((ROOT / "docs" / "demo_summary.json").read_text())
    assert "wall_minutes" in summary, "record the measured demo time: python tools/update_readme.py --minutes M"
    readme = README.read_text()
    assert update.rewrite(readme, summary) == readme, "README demo block is stale: run python tools/update_readme.py"


def _options(parser, path=("tracin-jax",)):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        else:
            yield " ".join(path), action


def test_every_command_and_option_has_help_and_the_readme_table_lists_real_commands():
    parser = cli.build_parser()
    options = list(_options(parser))
    assert [f"{cmd} {a.option_strings or a.dest}" for cmd, a in options if not a.help] == []
    commands = {cmd.split()[1] for cmd, _ in options if len(cmd.split()) > 1}
    text = README.read_text()
    block = text[text.index("| command | what it does |"):].split("\n\n")[0]
    table = re.findall(r"^\| `([a-z-]+)[^`]*` \|", block, re.M)
    assert table and set(table) <= commands, set(table) - commands
    assert commands <= set(table), f"commands missing from README's table: {commands - set(table)}"


def test_every_repository_path_the_readme_names_exists():
    """Files and folders README.md points to (figures, configs, tools, docs, results) are in
    the repository: a renamed or regenerated file leaves no dangling reference."""
    text = README.read_text()
    named = set(re.findall(r"\]\(((?:docs|configs|tools|experiments|tracin_jax|tests)/[^)\s#]+)\)", text))
    named |= set(re.findall(r"`((?:docs|configs|tools|experiments|tracin_jax|tests)/[^`\s]+)`", text))
    named = {p.split("::")[0].rstrip(".,:;") for p in named if not any(c in p for c in "<*{$")}
    # placeholders (configs/NAME.py) and run outputs (experiments/out/..., not in git) aside
    named = {p for p in named if not p.startswith("experiments/out/")
             and not any(re.fullmatch(r"[A-Z][A-Z_]*(\.\w+)?", part) for part in p.split("/"))}
    assert len(named) > 20, sorted(named)  # the README does name its figures, configs and tools
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README.md names paths that are not in the repository: {missing}"
