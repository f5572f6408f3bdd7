#!/usr/bin/env python3
"""ref_merge_model.py: the oracles of tests/check_merge_model.sh (real
`transformers`, `peft`, `torch`, `gguf` from PyPI): models written by
`peftc merge` loaded as plain models, against PEFT's own merge_and_unload().

  ref_merge_model.py jobs < LINES
      many of the commands below in one process: "NAME<TAB>COMMAND ARGS" a
      line; prints ok/FAIL - NAME: <the command's last line>
  ref_merge_model.py bert BASE ADAPTER MERGED TEXTS.txt OUT.probs [TOL]
      BertForSequenceClassification of BASE with the (peftc-written) ADAPTER
      through PeftModel.from_pretrained, unmerged and merge_and_unload()ed,
      and AutoModelForSequenceClassification.from_pretrained(MERGED) with no
      adapter code: prints the max abs logit differences; fails if MERGED
      has missing or unexpected weights or differs by more than TOL (1e-4;
      bf16 files need more), or the merge left the base's weights as they were; the
      merged model's class probabilities go to OUT.probs
  ref_merge_model.py bert-token BASE ADAPTER MERGED TEXTS.txt OUT.probs [TOL]
      the same for a token-classification adapter (BertForTokenClassification,
      AutoModelForTokenClassification on MERGED; logits of every token)
  ref_merge_model.py llama HF ADAPTER MERGED IDS.txt OUT.f32
      the same for LlamaForCausalLM (PEFT dir made by peft); MERGED's logits
      of the first line of IDS.txt go to OUT.f32
  ref_merge_model.py smol-lora OUT_DIR
      a LoRA in PEFT's layout for SmolLM2-135M's shapes (numpy)
  ref_merge_model.py gguf BASE.gguf MERGED.gguf HF ADAPTER TYPE [F32_MERGED.gguf|- [LAYERS]]
      reads both files with gguf.GGUFReader: every metadata key equal
      (general.file_type excepted when TYPE is given), every tensor the adapter
      does not touch byte for byte the base's (unless TYPE re-encodes block
      weights), every merged weight within 1e-5 of peft's merge_and_unload()
      weight with q/k rows permuted as convert_hf_to_gguf does; with TYPE
      (f16, bf16, q8_0, q4_1) every block weight's bytes equal
      gguf.quants.quantize of the f32 merge's values (F32_MERGED.gguf).
      HF "-": no HF base (a quantised GGUF), the reference is gguf's
      dequantised base weight + scale B A from the adapter file;
      LAYERS (e.g. 29) limits the value checks to those blocks
"""
import json, math, re, sys
import numpy as np


def bert(base, adapter, merged, texts, out, tol="1e-4", token=False):
    tol = float(tol)
    import torch
    from transformers import BertTokenizer
    if token:
        from transformers import AutoModelForTokenClassification as AutoModelForSequenceClassification
        from transformers import BertForTokenClassification as BertForSequenceClassification
    else:
        from transformers import AutoModelForSequenceClassification, BertForSequenceClassification
    from peft import PeftModel
    lines = [l.rstrip("\n") for l in open(texts) if l.strip()]
    tok = BertTokenizer(f"{base}/vocab.txt", do_lower_case=True)
    enc = tok(lines, padding=True, return_tensors="pt")
    cfg = json.load(open(f"{adapter}/adapter_config.json"))
    K = len(cfg["peftc"]["labels"]) if "peftc" in cfg and "labels" in cfg["peftc"] else 2
    m = BertForSequenceClassification.from_pretrained(base, num_labels=K, dtype=torch.float32)
    pm = PeftModel.from_pretrained(m, adapter).eval()
    with torch.no_grad():
        unmerged = pm(**enc).logits.double()
        ref = pm.merge_and_unload().eval()(**enc).logits.double()
    mm, info = AutoModelForSequenceClassification.from_pretrained(merged, output_loading_info=True, dtype=torch.float32)
    if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
        print(f"merged dir: missing {info['missing_keys']}, unexpected {info['unexpected_keys']}, "
              f"mismatched {info['mismatched_keys']}")
        sys.exit(1)
    mm.eval()
    with torch.no_grad():
        got = mm(**enc).logits.double()
    d1 = float((got - ref).abs().max())
    d2 = float((got - unmerged).abs().max())
    moved = float((ref - unmerged).abs().max())
    # the merge must have changed the base's weights (else the comparison proves nothing)
    from transformers import BertModel
    bw = BertModel.from_pretrained(base, dtype=torch.float32).state_dict()
    delta = max(float((v - bw[k]).abs().max()) for k, v in mm.bert.state_dict().items() if k in bw)
    np.savetxt(out, torch.softmax(got, -1).reshape(-1, got.shape[-1]).numpy(), fmt="%.8f")
    print(f"{type(mm).__name__} of the merged dir vs peft merge_and_unload {d1:.1e}, vs peft unmerged {d2:.1e} "
          f"(num_labels {mm.config.num_labels}, problem_type {mm.config.problem_type}; "
          f"the merge moved base weights by up to {delta:.1e})")
    sys.exit(0 if d1 <= tol and d2 <= tol and moved <= 1e-4 and delta > 1e-3 else 1)


def llama(hf, adapter, merged, ids_path, out, unmerged_out=None):
    import torch
    from transformers import LlamaForCausalLM
    from peft import PeftModel
    ids = torch.tensor([[int(x) for x in open(ids_path).readline().split()]])
    m = LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32)
    pm = PeftModel.from_pretrained(m, adapter).eval()
    base = LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        unmerged = pm(input_ids=ids).logits[0].double()
        ref = pm.merge_and_unload().eval()(input_ids=ids).logits[0].double()
        plain = base(input_ids=ids).logits[0].double()
    mm, info = LlamaForCausalLM.from_pretrained(merged, output_loading_info=True, dtype=torch.float32)
    if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
        print(f"merged dir: missing {info['missing_keys']}, unexpected {info['unexpected_keys']}")
        sys.exit(1)
    with torch.no_grad():
        got = mm.eval()(input_ids=ids).logits[0].double()
    got.float().numpy().tofile(out)
    if unmerged_out:
        unmerged.float().numpy().tofile(unmerged_out)
    d1, d2 = float((got - ref).abs().max()), float((got - unmerged).abs().max())
    moved = float((got - plain).abs().max())
    print(f"LlamaForCausalLM of the merged dir vs peft merge_and_unload {d1:.1e}, vs peft unmerged {d2:.1e} "
          f"(the adapter moves the logits by {moved:.2f})")
    sys.exit(0 if d1 <= 1e-4 and d2 <= 1e-4 and moved > 0.1 else 1)


GG = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
      "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
BLOCK_LINEAR = re.compile(r"blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")


def perm(w, n):
    o, i = w.shape
    return w.reshape(n, 2, o // n // 2, i).swapaxes(1, 2).reshape(o, i)


def field(r, key):
    f = r.fields.get(key)
    return None if f is None else f.contents()


def field_bytes(r, f):
    n = sum(p.nbytes for p in f.parts)
    return bytes(r.data[f.offset:f.offset + n])


def gguf_check(base, merged, hf, adapter, typ, f32_merged="-", layers=""):
    from gguf import GGUFReader, GGMLQuantizationType, quants
    st = json.load(open(f"{adapter}/adapter_config.json"))
    rb, rm = GGUFReader(base), GGUFReader(merged)
    if hf != "-":
        import torch
        from transformers import LlamaForCausalLM
        from peft import PeftModel
        cfg = json.load(open(f"{hf}/config.json"))
        nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        m = LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32)
        mw = {k: v.numpy() for k, v in PeftModel.from_pretrained(m, adapter).merge_and_unload().state_dict().items()}
    else:
        # no HF base (a quantised GGUF): the reference is gguf's dequantisation of
        # the base weight + PEFT's scale * B A from the adapter file, in float64
        from safetensors.numpy import load_file
        nh, nkv = int(field(rb, "llama.attention.head_count")), int(field(rb, "llama.attention.head_count_kv"))
        ad = load_file(f"{adapter}/adapter_model.safetensors")
        if st.get("rank_pattern") or st.get("alpha_pattern"):
            sys.exit("the no-HF reference takes no rank/alpha patterns")
        scale = st["lora_alpha"] / (math.sqrt(st["r"]) if st.get("use_rslora") else st["r"])
        mw = {}
        for k, A in ad.items():
            mk = re.match(r"base_model\.model\.(model\.layers\.(\d+)\.\w+\.(\w+))\.lora_A\.weight$", k)
            if not mk:
                continue
            B = ad[k.replace("lora_A", "lora_B")].astype(np.float64)
            t = {x.name: x for x in rb.tensors}[f"blk.{mk.group(2)}.{GG[mk.group(3)]}.weight"]
            w = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(B.shape[0], A.shape[1])
            n = nh if mk.group(3) == "q_proj" else nkv if mk.group(3) == "k_proj" else 0
            # the base's rows are in GGUF order: un-permute so the common code permutes back
            if n:
                o, i = w.shape
                w = w.reshape(n, o // n // 2, 2, i).swapaxes(1, 2).reshape(o, i)
            mw[mk.group(1) + ".weight"] = w + scale * (B @ A.astype(np.float64))
    fails = []
    for k in set(rb.fields) | set(rm.fields):
        if k.startswith("GGUF.") or (typ != "none" and k == "general.file_type"):
            continue
        # the key's bytes (name, type, value): quicker than decoding 49152-string arrays
        if k not in rb.fields or k not in rm.fields or field_bytes(rb, rb.fields[k]) != field_bytes(rm, rm.fields[k]):
            fails.append(f"key {k} differs")
    want_ft = {"none": None, "f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_1": 3}[typ]
    if want_ft is not None and field(rm, "general.file_type") != want_ft:
        fails.append(f"general.file_type {field(rm, 'general.file_type')}, want {want_ft}")
    tb = {t.name: t for t in rb.tensors}
    tm = {t.name: t for t in rm.tensors}
    tf = {t.name: t for t in GGUFReader(f32_merged).tensors} if f32_merged != "-" else {}
    if list(tb) != list(tm):
        fails.append(f"tensor names/order differ: {sorted(set(tb) ^ set(tm))}")
    targets = set()
    for mod in st["target_modules"]:
        targets.add(GG[mod])
    # LAYERS "29": the value checks on those blocks only (a 135M model's every
    # weight through numpy's quantisers takes minutes on a loaded machine)
    only = {int(x) for x in layers.split(",")} if layers else None
    n_merged = n_same = n_req = 0
    maxd = 0.0
    qt = {"f16": GGMLQuantizationType.F16, "bf16": GGMLQuantizationType.BF16, "q8_0": GGMLQuantizationType.Q8_0,
          "q4_1": GGMLQuantizationType.Q4_1}
    for name, t in tb.items():
        u = tm.get(name)
        if u is None:
            continue
        mm_ = re.match(r"blk\.(\d+)\.(\w+)\.weight$", name)
        adapted = mm_ and mm_.group(2) in targets
        linear = bool(BLOCK_LINEAR.match(name))
        if only is not None and mm_ and int(mm_.group(1)) not in only and linear:
            continue
        if typ in qt and linear:
            # re-encoded: the bytes of gguf's own quantiser on the f32 merge's (or the base's) values
            src = tf[name] if name in tf else t
            vals = np.asarray(quants.dequantize(src.data, src.tensor_type), dtype=np.float32).reshape(u.shape[::-1].tolist())
            want = quants.quantize(vals, qt[typ])
            if u.tensor_type != qt[typ] or not np.array_equal(np.asarray(u.data).view(np.uint8).ravel(), want.view(np.uint8).ravel()):
                fails.append(f"{name}: not gguf.quants.quantize({typ}) of the merged values")
            n_req += 1
        if adapted:
            l, g = int(mm_.group(1)), mm_.group(2)
            mod = [k for k, v in GG.items() if v == g][0]
            sub = "self_attn" if mod.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            ref = mw[f"model.layers.{l}.{sub}.{mod}.weight"].astype(np.float64)
            if mod == "q_proj":
                ref = perm(ref, nh)
            if mod == "k_proj":
                ref = perm(ref, nkv)
            got = np.asarray(quants.dequantize(u.data, u.tensor_type), dtype=np.float64).reshape(ref.shape)
            tol = {"none": 1e-5, "f32": 1e-5, "f16": 2e-3, "bf16": 1.6e-2, "q8_0": 2e-2, "q4_1": 0.3}[typ] * max(1.0, np.abs(ref).max())
            d = float(np.abs(got - ref).max())
            maxd = max(maxd, d)
            if d > tol:
                fails.append(f"{name}: max abs diff {d:.2e} from peft's merge_and_unload weight > {tol:.1e}")
            n_merged += 1
        elif not (typ in qt and linear):
            if u.tensor_type != t.tensor_type or bytes(np.asarray(u.data).view(np.uint8).ravel()) != bytes(np.asarray(t.data).view(np.uint8).ravel()):
                fails.append(f"{name}: changed, but the adapter does not touch it")
            n_same += 1
    if n_merged == 0:
        fails.append("no merged weight was checked")
    if fails:
        print("; ".join(fails[:6]))
        sys.exit(1)
    what = "peft's merge_and_unload (q/k permuted)" if hf != "-" else "gguf's dequantised base + scale B A (numpy, float64)"
    print(f"gguf reads it: {n_merged} merged weights within {maxd:.1e} of {what}, "
          f"{n_same} other tensors byte-equal, {n_req} re-encoded as gguf's {typ} quantiser, metadata equal")


def smol_lora(out):
    """A LoRA in PEFT's layout for SmolLM2-135M's shapes (rsLoRA, r 8, alpha
    16, q/k/v/o/up/down), small random factors: written with numpy (the file
    layout is what peft writes, tests/check_interop.sh has peft load such
    files) so that no 135M-parameter torch model must be built for it."""
    import os
    from safetensors.numpy import save_file
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(5)
    C, F, KV, r = 576, 1536, 192, 8
    dims = {"self_attn.q_proj": (C, C), "self_attn.k_proj": (C, KV), "self_attn.v_proj": (C, KV),
            "self_attn.o_proj": (C, C), "mlp.up_proj": (C, F), "mlp.down_proj": (F, C)}
    t = {}
    for l in range(30):
        for mod, (i, o) in dims.items():
            k = f"base_model.model.model.layers.{l}.{mod}"
            t[f"{k}.lora_A.weight"] = (rng.standard_normal((r, i)) * 0.02).astype(np.float32)
            t[f"{k}.lora_B.weight"] = (rng.standard_normal((o, r)) * 0.02).astype(np.float32)
    save_file(t, f"{out}/adapter_model.safetensors", metadata={"format": "pt"})
    json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 16, "use_rslora": True,
               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
               "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {},
               "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}, open(f"{out}/adapter_config.json", "w"))


def jobs():
    """One process for many checks (torch + transformers + peft take ~10 s to
    import on a loaded machine): stdin lines "NAME<TAB>COMMAND ARGS..." (TAB
    separated), each run as its own command; prints "ok   - NAME: <its last
    line>" or "FAIL - NAME: ..." per line."""
    import contextlib, io, shlex
    for line in sys.stdin:
        if not line.strip():
            continue
        name, cmd = line.rstrip("\n").split("\t", 1)
        buf = io.StringIO()
        code = 0
        try:
            with contextlib.redirect_stdout(buf):
                run(shlex.split(cmd))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                buf.write(e.code)
        except Exception as e:
            code = 1
            buf.write(f"{type(e).__name__}: {e}")
        msg = " ".join(buf.getvalue().strip().splitlines()[-2:])
        print(f"{'ok  ' if code == 0 else 'FAIL'} - {name}: {msg}", flush=True)


def run(argv):
    cmd, args = argv[0], argv[1:]
    if cmd == "bert":
        bert(*args)
    elif cmd == "bert-token":
        bert(*args[:5], tol=args[5] if len(args) > 5 else "1e-4", token=True)
    elif cmd == "llama":
        llama(*args)
    elif cmd == "smol-lora":
        smol_lora(*args)
    elif cmd == "gguf":
        gguf_check(*args)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    if sys.argv[1] == "jobs":
        jobs()
    else:
        run(sys.argv[1:])
