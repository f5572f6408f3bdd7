#!/usr/bin/env python3
"""Seed corpora for the fuzz targets (tests/fuzz/targets.c), cut from real
files (the MiniLM model directory's files, SmolLM2's GGUF metadata, GLUE /
GSM8K / Alpaca / SAMSum records, peftc's own adapters and checkpoints of a
tiny run) down to a few KB each so the fuzzers run fast. Nothing is copied
whole: a seed is a small derived file.

  make_seeds.py OUT MINILM_DIR GGUF DATA RUNS_DIR
Each target's seeds go to OUT/<target>/; the first byte of a tokenizer,
adapter, data and lm_data seed picks the sub-format (targets.c says how)."""
import csv, io, json, os, struct, sys
import numpy as np

out, minilm, gguf_path, data, runs = sys.argv[1:6]


def put(target, name, b):
    os.makedirs(f"{out}/{target}", exist_ok=True)
    if isinstance(b, str):
        b = b.encode()
    open(f"{out}/{target}/{name}", "wb").write(b)


# safetensors: small tensors of MiniLM (LayerNorm, a bias) in F32 / F16 / BF16
from safetensors.numpy import load_file, save
t = load_file(f"{minilm}/model.safetensors")
small = {k: v[:16] for k, v in t.items() if k.endswith("LayerNorm.weight")}
small = dict(list(small.items())[:3])
put("safetensors", "f32.safetensors", save(small, metadata={"format": "pt"}))
put("safetensors", "f16.safetensors", save({k: v.astype(np.float16) for k, v in small.items()}))
emb = t["embeddings.word_embeddings.weight"][:4, :8].copy()
put("safetensors", "2d.safetensors", save({"w": emb, "i": np.arange(6, dtype=np.int64)}))
raw = save({"w": emb})
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n]); hdr["w"]["dtype"] = "BF16"; hdr["w"]["shape"] = [4, 16]
h = json.dumps(hdr).encode()
put("safetensors", "bf16.safetensors", struct.pack("<Q", len(h)) + h + raw[8 + n:])

# GGUF: SmolLM2's metadata (architecture, sizes, its tokenizer cut to 300
# tokens and the merges among them), one small F32 tensor
import gguf
r = gguf.GGUFReader(gguf_path)
w = gguf.GGUFWriter(f"{out}/tmp.gguf", "llama")
tokens = [bytes(r.fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8", "replace")
          for i in r.fields["tokenizer.ggml.tokens"].data[:300]]
keep = set(tokens)
merges = []
for i in r.fields["tokenizer.ggml.merges"].data[:3000]:
    m = bytes(r.fields["tokenizer.ggml.merges"].parts[i]).decode("utf-8", "replace")
    a, _, b = m.partition(" ")
    if a in keep and b in keep and a + b in keep:
        merges.append(m)
for k in ["llama.block_count", "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
          "llama.attention.head_count_kv", "llama.context_length"]:
    f = r.fields[k]
    w.add_uint32(k, int(f.parts[f.data[0]][0]))
w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("smollm")
w.add_token_list(tokens)
w.add_token_merges(merges)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
put("gguf", "smollm_vocab.gguf", open(f"{out}/tmp.gguf", "rb").read())
os.remove(f"{out}/tmp.gguf")

# config.json: MiniLM's, a Llama one (SmolLM2's sizes), edge values
put("config", "minilm.json", open(f"{minilm}/config.json").read())
put("config", "llama.json", json.dumps({"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000, "tie_word_embeddings": True,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}}))

# tokenizers: MiniLM's vocab.txt (first 400 lines), its tokenizer.json with
# the vocabulary cut likewise, SmolLM2's tokenizer.json cut to 300 tokens
vocab = open(f"{minilm}/vocab.txt", encoding="utf-8").read().split("\n")[:400]
put("tokenizer", "vocab.txt", b"\x00" + "\n".join(vocab + ["the", "##s", "movie", "good"]).encode())
tj = json.load(open(f"{minilm}/tokenizer.json", encoding="utf-8"))
tj["model"]["vocab"] = {k: v for k, v in tj["model"]["vocab"].items() if v < 400}
put("tokenizer", "wordpiece.json", b"\x01" + json.dumps(tj, ensure_ascii=False).encode())
bpe = {"version": "1.0", "added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": True, "single_word": False,
       "lstrip": False, "rstrip": False, "normalized": False}],
       "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
       "use_regex": True}, "decoder": {"type": "ByteLevel"},
       "model": {"type": "BPE", "vocab": {t_: i for i, t_ in enumerate(tokens)}, "merges": merges}}
put("tokenizer", "bpe.json", b"\x02" + json.dumps(bpe, ensure_ascii=False).encode())

# adapter configs written by peftc runs, and delta specs of the presets
for d in sorted(os.listdir(runs)):
    p = f"{runs}/{d}/adapter_config.json"
    if os.path.exists(p):
        put("adapter", f"{d}.json", b"\x00" + open(p, "rb").read())
    p = f"{runs}/{d}/checkpoint.safetensors"
    if os.path.exists(p):
        put("checkpoint", f"{d}.safetensors", open(p, "rb").read())
for i, s in enumerate(["site=ffn.out,insert=sequential,r=16,act=relu", "site=attn.v,kind=scale",
                       "site=attn.q,r=4,act=identity,compose=scale:2,dropout=0.1,init=lora",
                       "site=ffn.in,r=8,compose=gate,bias=1,heads=2", "site=ffn.act,kind=scale,compose=learned:0.5"]):
    put("adapter", f"delta{i}.txt", b"\x01" + s.encode())

# data: GLUE rows as TSV, CSV (quoted) and JSONL
rows = open(f"{data}/glue-sst2/dev.tsv", encoding="utf-8").read().split("\n")[:20]
put("data", "sst2.tsv", b"\x00" + "\n".join(rows).encode())
mrpc = open(f"{data}/glue-mrpc/dev.tsv", encoding="utf-8-sig").read().split("\n")[:12]
put("data", "mrpc.tsv", b"\x00" + "\n".join(mrpc).encode())
buf = io.StringIO()
wr = csv.writer(buf)
for line in rows:
    wr.writerow(line.split("\t"))
put("data", "sst2.csv", b"\x01" + buf.getvalue().encode())
js = [json.dumps({"sentence": l.split("\t")[0], "label": int(l.split("\t")[1])}) for l in rows[1:] if "\t" in l]
put("data", "sst2.jsonl", b"\x02" + "\n".join(js).encode())

# lm_data: GSM8K (prompt/response, template), Alpaca (its JSON array), SAMSum as text
gsm = open(f"{data}/gsm8k/train.jsonl", encoding="utf-8").read().split("\n")[:3]
put("lm_data", "gsm_template", bytes([5, 0x34]) + "\n".join(gsm).encode())
pr = [json.dumps({"prompt": json.loads(l)["question"], "response": json.loads(l)["answer"]}) for l in gsm]
put("lm_data", "gsm_pr", bytes([2, 0x21]) + "\n".join(pr).encode())
alp = json.load(open(f"{data}/alpaca-5k/alpaca_data.json", encoding="utf-8"))[:3]
put("lm_data", "alpaca.json", bytes([3, 0x58]) + json.dumps(alp).encode())
sam = open(f"{data}/samsum/validation.jsonl", encoding="utf-8").read().split("\n")[:2]
txt = [json.dumps({"text": json.loads(l).get("dialogue", "")[:300]}) for l in sam]
put("lm_data", "samsum_text", bytes([1, 0x43]) + "\n".join(txt).encode())
chat = [json.dumps({"messages": [{"role": "user", "content": json.loads(l)["question"][:200]},
                                 {"role": "assistant", "content": json.loads(l)["answer"][:200]}]}) for l in gsm]
put("lm_data", "chat", bytes([4, 0x72]) + "\n".join(chat).encode())
print("seeds in", out)
