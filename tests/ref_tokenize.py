#!/usr/bin/python3
"""Reference tokenizer for tests/check_tokenizer.sh: Hugging Face `tokenizers`.

Loads MODEL_DIR/tokenizer.json, disables its padding and sets truncation to
LongestFirst at --max-len (default 512), then encodes each stdin line (with
--pairs, a TAB splits the line into a sentence pair at its first TAB) and
prints the ids space-separated, one line per input line.

usage: ref_tokenize.py MODEL_DIR [--pairs] [--max-len N] [--type-ids] < lines
"""
import argparse
import sys

from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--pairs", action="store_true")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--type-ids", action="store_true",
                    help="print 'ids | type_ids' instead of ids")
    args = ap.parse_args()

    tok = Tokenizer.from_file(args.model_dir.rstrip("/") + "/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(max_length=args.max_len, strategy="longest_first")

    data = sys.stdin.buffer.read().decode("utf-8")
    # split on "\n" only (str.splitlines would also split at \x1c, \x85, U+2028...)
    lines = data.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    inputs = []
    for line in lines:
        if line.endswith("\r"):
            line = line[:-1]
        if args.pairs and "\t" in line:
            a, _, b = line.partition("\t")
            inputs.append((a, b))
        else:
            inputs.append(line)
    out = []
    for enc in tok.encode_batch(inputs):
        s = " ".join(map(str, enc.ids))
        if args.type_ids:
            s += " | " + " ".join(map(str, enc.type_ids))
        out.append(s)
    sys.stdout.write("".join(x + "\n" for x in out))


if __name__ == "__main__":
    main()
