#!/usr/bin/python3
"""Reference side of tests/check_bpe.sh: Hugging Face `tokenizers` / transformers.

  ref_bpe.py texts DATA_DIR HARD_CASES > texts.jsonl
      one JSON string per line: real texts (GSM8K test: 200 questions and
      answers; Alpaca: 200 instructions, inputs, outputs; XSum: the 10 sample
      and 100 test1000 documents and summaries; WMT16 en-ro: 150 newstest2016
      lines a side and the 11-line sample both sides) and the hard-case file (lines, "\\n" and "\\t" escapes kept as is)
  ref_bpe.py dump GGUF OUT
      the GGUF's tokenizer metadata as a simple dump for tests/bpe_driver.c:
      "key value" lines, then "tokens N", N lines "type len<TAB>bytes", then
      "merges M", M lines "len<TAB>bytes"
  ref_bpe.py hfjson GGUF OUT_DIR [PRE]
      tokenizer.json + tokenizer_config.json built by transformers' GGUF
      converter (convert_gguf_tokenizer), with the pre-tokenizer that
      tokenizer.ggml.pre (or PRE, to test other pipelines on the same vocab)
      names.  transformers 5.24 has no entry for "smollm" (it would fall back
      to GPT-2's plain ByteLevel); we set what SmolLM2's published
      tokenizer.json has: Sequence[Digits(individual_digits), ByteLevel(
      add_prefix_space=false, use_regex=true)].  For the Llama-3 family we set
      ignore_merges, as Llama-3's tokenizer.json and llama.cpp do.
  ref_bpe.py variants DIR OUT_BASE PRE...
      DIR/tokenizer.json with the pre-tokenizer (and ignore_merges) hfjson
      would give for each PRE, into OUT_BASE-PRE/ (quicker than reconverting)
  ref_bpe.py encode TEXTS [--special] [--no-parse] TOKENIZER_JSON:OUT...
      ids per line of TEXTS (JSON strings) into each OUT (add_special_tokens
      only with --special; --no-parse: encode_special_tokens, i.e. special
      tokens in the text are plain text)
  ref_bpe.py chat TOK_DIR < chats.jsonl
      transformers' apply_chat_template(tokenize=False) per line as a JSON
      string (each input line: {"messages": [...], "add_generation_prompt": b})
"""
import json
import os
import sys


def texts(data, hard):
    out = []

    def add(s, n=None):
        out.append(s)

    with open(os.path.join(data, "gsm8k/test.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 200:
                break
            d = json.loads(line)
            add(d["question"])
            add(d["answer"])
    al = json.load(open(os.path.join(data, "alpaca-5k/alpaca_data.json"), encoding="utf-8"))
    for d in al[:200]:
        add(d["instruction"])
        if d["input"]:
            add(d["input"])
        add(d["output"])
    with open(os.path.join(data, "xsum-sample/sample.json"), encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            add(d["document"])
            add(d["summary"])
    with open(os.path.join(data, "xsum-test1000/test.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 100:
                break
            d = json.loads(line)
            add(d["document"])
            add(d["summary"])
    for name in ("wmt16-en-ro-newstest2016/newstest2016.en", "wmt16-en-ro-newstest2016/newstest2016.ro",
                 "wmt16-en-ro-sample/train.source", "wmt16-en-ro-sample/train.target"):
        with open(os.path.join(data, name), encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= 150:
                    break
                add(line.rstrip("\n"))
    with open(hard, encoding="utf-8") as f:
        for line in f.read().split("\n"):
            if line:
                add(line.replace("\\n", "\n").replace("\\t", "\t"))
    sys.stdout.write("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in out))


def read_gguf(path):
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields
    md = {}
    for k in f:
        if k.startswith("tokenizer.") and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                    "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            md[k] = f[k].contents()
    tokens = f["tokenizer.ggml.tokens"].contents()
    merges = f["tokenizer.ggml.merges"].contents() if "tokenizer.ggml.merges" in f else []
    types = f["tokenizer.ggml.token_type"].contents() if "tokenizer.ggml.token_type" in f else []
    md["general.architecture"] = f["general.architecture"].contents()
    return md, tokens, merges, types


def dump(path, out):
    md, tokens, merges, types = read_gguf(path)
    with open(out, "wb") as o:
        for k in ("pre", "bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id",
                  "add_bos_token", "add_eos_token"):
            v = md.get("tokenizer.ggml." + k)
            if v is not None:
                o.write(("%s %s\n" % (k, int(v) if isinstance(v, bool) else v)).encode())
        ct = md.get("tokenizer.chat_template")
        if ct is not None:
            b = ct.encode()
            o.write(b"chat_template %d\t" % len(b) + b + b"\n")
        o.write(b"tokens %d\n" % len(tokens))
        for i, t in enumerate(tokens):
            b = t.encode()
            o.write(b"%d %d\t" % (types[i] if types else 1, len(b)) + b + b"\n")
        o.write(b"merges %d\n" % len(merges))
        for m in merges:
            b = m.encode()
            o.write(b"%d\t" % len(b) + b + b"\n")


LLAMA3 = ("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "pixtral")


def hfjson(path, outdir, pre=None):
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (convert_gguf_tokenizer,
                                                                       get_gguf_tokenizer)
    arch, tdict, tconf = get_gguf_tokenizer(path)
    if pre:
        tdict["pre_tokenizer_type"] = pre
    pre = tdict.get("pre_tokenizer_type")
    backend, _ = convert_gguf_tokenizer(arch, tdict)
    os.makedirs(outdir, exist_ok=True)
    tj = os.path.join(outdir, "tokenizer.json")
    backend.save(tj)
    if pre == "smollm" or pre in LLAMA3:
        d = json.load(open(tj, encoding="utf-8"))
        set_pre(d, pre)
        json.dump(d, open(tj, "w", encoding="utf-8"), ensure_ascii=False)
    conf = {k: v for k, v in tconf.items() if v is not None}
    json.dump(conf, open(os.path.join(outdir, "tokenizer_config.json"), "w", encoding="utf-8"),
              ensure_ascii=False)


def set_pre(d, pre):
    """The pre-tokenizer (as JSON) and ignore_merges transformers' converter gives for PRE."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if pre == "smollm":
        d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, bl]}
    elif pre in GGUF_PRE_TOKENIZER_SPLITS:
        d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GGUF_PRE_TOKENIZER_SPLITS[pre]}, "behavior": "Isolated",
             "invert": False}, dict(bl, use_regex=False)]}
    else:
        d["pre_tokenizer"] = bl
    d["model"]["ignore_merges"] = pre in LLAMA3


# Chat templates as their models publish them (Llama-3-8B-Instruct, Zephyr-7B-beta).
CHAT_TEMPLATES = {
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
              "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
              "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
              "{{ content }}{% endfor %}{% if add_generation_prompt %}"
              "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
              "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + "
              "message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
              "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
              "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
}


def features(d, name):
    """Pipelines that exercise the tokenizer.json constructs one by one."""
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    seq = lambda *p: {"type": "Sequence", "pretokenizers": list(p)}
    split = lambda pat, beh, inv=False, lit=False: {"type": "Split", "pattern": {"String" if lit else "Regex": pat},
                                                  "behavior": beh, "invert": inv}
    if name == "t-prefix":
        d["pre_tokenizer"] = dict(bl, add_prefix_space=True)
        d["model"]["merges"] = [" ".join(m) for m in d["model"]["merges"]]
        d["post_processor"] = {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                                          {"Sequence": {"id": "A", "type_id": 0}},
                                          {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
                               "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]},
                                                  "<|im_end|>": {"id": "<|im_end|>", "ids": [2], "tokens": ["<|im_end|>"]}}}
        for a in d["added_tokens"]:
            if a["content"] == "<|im_end|>":
                a["lstrip"] = a["rstrip"] = True
            if a["content"] == "<|im_start|>":
                a["rstrip"] = True
    elif name == "t-prefix2":
        d["pre_tokenizer"] = seq(split("\\p{P}", "Isolated"), dict(bl, add_prefix_space=True, use_regex=False))
    elif name == "t-split":
        d["pre_tokenizer"] = seq(split(" ", "MergedWithPrevious", lit=True), split("[,.;:]", "MergedWithNext"),
                                 {"type": "Digits", "individual_digits": False}, dict(bl, use_regex=False))
    elif name == "t-contig":
        d["pre_tokenizer"] = seq(split("\\s", "Contiguous", inv=True), bl)
    elif name == "t-removed":
        d["pre_tokenizer"] = seq(split("\\s+", "Removed"), split("o", "Isolated", inv=True), dict(bl, use_regex=False))
    elif name == "t-nfc":
        d["normalizer"] = {"type": "NFC"}
        d["model"]["ignore_merges"] = True
    else:
        raise SystemExit("unknown variant " + name)


def variants(d, base, pres):
    raw = open(os.path.join(d, "tokenizer.json"), encoding="utf-8").read()
    conf = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
    for pre in pres:
        out = base + "-" + pre
        os.makedirs(out, exist_ok=True)
        src = json.loads(raw)
        c = dict(conf)
        if pre.startswith("chat-"):
            c["chat_template"] = CHAT_TEMPLATES[pre[5:]]
            c["bos_token"], c["eos_token"] = "<|im_start|>", "<|im_end|>"
        elif pre.startswith("t-"):
            features(src, pre)
        else:
            set_pre(src, pre)
        json.dump(src, open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8"), ensure_ascii=False)
        json.dump(c, open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8"), ensure_ascii=False)


def read_jsonl():
    data = sys.stdin.buffer.read().decode("utf-8")
    return [json.loads(x) for x in data.split("\n") if x]


def encode(texts, args):
    from tokenizers import Tokenizer
    special = "--special" in args
    noparse = "--no-parse" in args
    data = open(texts, "rb").read().decode("utf-8")
    xs = [json.loads(x) for x in data.split("\n") if x]
    for a in args:
        if a in ("--special", "--no-parse"):
            continue
        tj, out = a.rsplit(":", 1)
        tok = Tokenizer.from_file(tj)
        if noparse:
            tok.encode_special_tokens = True
        enc = tok.encode_batch(xs, add_special_tokens=special)
        with open(out, "w") as f:
            f.write("".join(" ".join(map(str, e.ids)) + "\n" for e in enc))


def chat(d):
    from transformers import PreTrainedTokenizerFast
    conf = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"),
                                  bos_token=conf.get("bos_token"), eos_token=conf.get("eos_token"))
    tok.chat_template = conf["chat_template"]
    for c in read_jsonl():
        s = tok.apply_chat_template(c["messages"], tokenize=False,
                                    add_generation_prompt=c["add_generation_prompt"])
        sys.stdout.write(json.dumps(s, ensure_ascii=False) + "\n")


def main():
    cmd = sys.argv[1]
    if cmd == "texts":
        texts(sys.argv[2], sys.argv[3])
    elif cmd == "dump":
        dump(sys.argv[2], sys.argv[3])
    elif cmd == "hfjson":
        hfjson(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    elif cmd == "variants":
        variants(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "encode":
        encode(sys.argv[2], sys.argv[3:])
    elif cmd == "chat":
        chat(sys.argv[2])
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
