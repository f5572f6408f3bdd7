#!/usr/bin/env python3
"""ref_embedding.py: the oracle of peftc's --task embedding
(tests/check_embedding.sh). Independent of peftc's code: Hugging Face
transformers' BertModel in float64 autograd, PEFT's LoRA, Hugging Face
tokenizers, and sentence-transformers' own Pooling(mean) module and
MultipleNegativesRankingLoss (scale 20, cos_sim, in-batch negatives).

Modes (run from the repo root):
  gen OUTDIR      after tests/make_tiny_bert.py OUTDIR: OUTDIR/model0 (the tiny
                  BERT with dropout 0, for exact gradients), OUTDIR/pairs.tsv
                  (sentence1 / sentence2 / score), and an init adapter per
                  case (OUTDIR/init_CASE: random non-zero weights,
                  task_type FEATURE_EXTRACTION)
  compare-grads CASE OUTDIR C.safetensors
                  the reference loss / embeddings / gradients of CASE at the
                  init weights against tests/emb_grad's, and its token ids
                  against Hugging Face tokenizers' (each text alone)
  corr EVAL.json E1.txt E2.txt PAIRS.tsv
                  peftc eval's cosine Pearson / Spearman against scipy.stats on
                  the cosine similarities of `peftc embed --adapter`'s output
  merged MERGED_DIR TEXTS.txt EMB.txt
                  `peftc merge`'s output of an embedding adapter loads in
                  transformers as a plain BertModel (no head) whose mean-pooled
                  embeddings (sentence-transformers' Pooling) of TEXTS equal
                  EMB.txt (`peftc embed --adapter`'s, unmerged)
  check-config RUN_DIR
                  the adapter's task_type is FEATURE_EXTRACTION, peftc.task
                  embedding, no head tensors; PEFT's LoraConfig loads it
Output: "ok   - ..." / "FAIL - ..." lines, then "## <passed> <failed>".
"""
import json
import os
import sys
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

torch.set_num_threads(1)

NV = 3                        # virtual tokens
LORA_R, LORA_ALPHA = 4, 8.0
BERT = "base_model.model.bert."   # peftc / PEFT names of the base tensors
PEFT_ROOT = "base_model.model."
CASES = ("emb_full", "emb_lora", "emb_prompt", "emb_ptpl")
TEMPLATE = "P {text} P P"     # emb_ptpl: virtual tokens inside the sequence ([CLS] v1 text v2 v3 [SEP])
TOL_LOSS, TOL_EMB, TOL_GRAD, GRAD_FLOOR = 1e-5, 1e-5, 1e-4, 1e-3
# anchors and positives of different lengths, an unknown word, a repeated pair text
PAIRS = [("good movie", "a great film", "4.5"), ("the plot was awful", "terrible story", "4.2"),
         ("a very nice actor", "the actor is really fine", "4.8"), ("not bad", "quite good but not great", "3.9"),
         ("zzyzx film", "the movie", "4.0"), ("poor story, bad plot.", "awful plot", "4.6")]
passed = failed = 0


def check(cond, msg):
    global passed, failed
    print(("ok   - " if cond else "FAIL - ") + msg)
    if cond:
        passed += 1
    else:
        failed += 1


def finish():
    print(f"## {passed} {failed}")
    sys.exit(1 if failed else 0)


def gen(out):
    src = os.path.join(out, "model")
    md = os.path.join(out, "model0")
    os.makedirs(md, exist_ok=True)
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    json.dump(cfg, open(os.path.join(md, "config.json"), "w"), indent=2)
    for f in ("model.safetensors", "vocab.txt", "tokenizer_config.json"):
        dst = os.path.join(md, f)
        if not os.path.exists(dst):
            os.symlink(os.path.abspath(os.path.join(src, f)), dst)
    with open(os.path.join(out, "pairs.tsv"), "w") as f:
        f.write("sentence1\tsentence2\tscore\n")
        for a, b, s in PAIRS:
            f.write(f"{a}\t{b}\t{s}\n")
    base = load_file(os.path.join(src, "model.safetensors"))
    rng = np.random.default_rng(3)
    for case in CASES:
        write_init(out, case, base, rng, cfg["hidden_size"], cfg["num_hidden_layers"])
    check(True, f"fixture written: {len(PAIRS)} pairs, init adapters {', '.join(CASES)}")
    finish()


def trainable(case, base, C, L):
    t = {}
    if case == "emb_full":
        for n, v in base.items():
            if not n.startswith("pooler."):   # the mean pooling never reads the pooler
                t[BERT + n] = v.shape
    elif case == "emb_lora":
        for l in range(L):
            for m in ("query", "value"):
                t[f"{BERT}encoder.layer.{l}.attention.self.{m}.lora_A.weight"] = (LORA_R, C)
                t[f"{BERT}encoder.layer.{l}.attention.self.{m}.lora_B.weight"] = (C, LORA_R)
    else:
        t["prompt_embeddings"] = (NV, C)
    return t


def write_init(out, case, base, rng, C, L):
    d = os.path.join(out, f"init_{case}")
    os.makedirs(d, exist_ok=True)
    t = {}
    for n, shape in trainable(case, base, C, L).items():
        if case == "emb_full":
            v = base[n[len(BERT):]]
            t[n] = (v + rng.standard_normal(v.shape) * 0.05).astype(np.float32)
        else:
            t[n] = (rng.standard_normal(shape) * 0.3).astype(np.float32)
    save_file(t, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    own = {"method": case.split("_")[1], "labels": [], "max_len": 24, "task": "embedding"}
    cfg = {"peft_type": "PEFTC", "task_type": "FEATURE_EXTRACTION", "peftc": own}
    if case == "emb_full":
        own["base"] = "all"
    if case == "emb_lora":
        cfg.update(peft_type="LORA", r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=["query", "value"])
        del own["task"]   # chosen from task_type alone
    if case == "emb_prompt":
        own["method"] = "prompt"
        own["prompt"] = {"num_virtual_tokens": NV, "before_cls": True, "template": ""}
    if case == "emb_ptpl":
        own["method"] = "prompt"
        own["prompt"] = {"num_virtual_tokens": NV, "before_cls": False, "template": TEMPLATE}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def st_loss():
    """sentence-transformers' Pooling(mean) and MultipleNegativesRankingLoss (defaults: scale 20, cos_sim)."""
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.models import Pooling
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    return Pooling, MultipleNegativesRankingLoss


def compare_grads(case, out, cpath):
    from transformers import BertConfig, BertModel
    from tokenizers import BertWordPieceTokenizer
    import sentence_transformers
    Pooling, MNRL = st_loss()
    c = load_file(cpath)
    md = os.path.join(out, "model0")
    cfg = BertConfig.from_dict(json.load(open(os.path.join(md, "config.json"))))
    C, L = cfg.hidden_size, cfg.num_hidden_layers
    base_np = load_file(os.path.join(md, "model.safetensors"))
    init = {k: torch.from_numpy(v.astype(np.float64)) for k, v in
            load_file(os.path.join(out, f"init_{case}", "adapter_model.safetensors")).items()}
    names = sorted(trainable(case, base_np, C, L))
    check(sorted(init) == names, f"{case}: the init adapter holds exactly the trainable tensors ({len(names)})")
    torch.manual_seed(0)
    model = BertModel(cfg, add_pooling_layer=True).double()
    sd = {k: torch.from_numpy(v.astype(np.float64)) for k, v in base_np.items()}
    if case == "emb_full":
        for n, v in init.items():
            sd[n[len(BERT):]] = v
    model.load_state_dict(sd)
    model.eval()   # dropout 0 anyway: train and eval modes agree
    params = {}
    if case == "emb_lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(task_type="FEATURE_EXTRACTION", r=LORA_R, lora_alpha=LORA_ALPHA,
                                                 lora_dropout=0.0, target_modules=["query", "value"]))
        with torch.no_grad():
            for n, p in model.named_parameters():
                key = n.replace(".default", "").replace(PEFT_ROOT, BERT, 1)   # PEFT on a bare BertModel has no "bert."
                if key in init and p.requires_grad:
                    p.copy_(init[key])
                    params[key] = p
        check(sorted(params) == names, f"{case}: PEFT's trainable LoRA tensors (FEATURE_EXTRACTION) are peftc's ({len(params)})")
    else:
        for n, p in model.named_parameters():
            key = BERT + n
            p.requires_grad_(case == "emb_full" and key in init)
            if case == "emb_full" and key in init:
                params[key] = p
    tok = BertWordPieceTokenizer(os.path.join(md, "vocab.txt"), lowercase=True)
    nv = NV if case in ("emb_prompt", "emb_ptpl") else 0
    tok.enable_truncation(max_length=24 - nv)
    texts = [a for a, _, _ in PAIRS] + [b for _, b, _ in PAIRS]
    encs = [tok.encode(t) for t in texts]
    B = len(texts)
    cids = torch.from_numpy(c["input_ids"].astype(np.int64))
    T = cids.shape[1]
    lens = [len(e.ids) for e in encs]
    ok_ids = all(cids[b, :lens[b] + nv][cids[b, :lens[b] + nv] >= 0].tolist() == encs[b].ids for b in range(B))
    check(ok_ids and cids.shape[0] == B, f"{case}: token ids of each text alone equal Hugging Face tokenizers' ({B} texts, T {T})")
    # peftc's layout: where its virtual tokens sit (ids -1..-NV), checked against the method's rule
    vpos = [[j for j in range(T) if cids[b, j] < 0] for b in range(B)]
    if case == "emb_prompt":
        check(all(v == list(range(NV)) for v in vpos), f"{case}: the {NV} virtual tokens come before [CLS]")
    elif case == "emb_ptpl":
        check(all(v == [1, lens[b] - 1 + 1, lens[b] + 1] for b, v in enumerate(vpos)),
              f"{case}: template '{TEMPLATE}': [CLS] v1 text v2 v3 [SEP]")
    # the input: word embeddings of the real ids, the prompt's rows at the virtual positions
    mask = torch.zeros(B, T, dtype=torch.long)
    pool_mask = torch.zeros(B, T, dtype=torch.long)
    n_tok = [lens[b] + nv for b in range(B)]
    for b in range(B):
        mask[b, :n_tok[b]] = 1
        pool_mask[b, :n_tok[b]] = (cids[b, :n_tok[b]] >= 0).long()   # virtual tokens are not part of the sentence
    ids_clean = cids.clamp(min=0) * mask
    if nv:
        prompt = init["prompt_embeddings"].clone().requires_grad_(True)
        params["prompt_embeddings"] = prompt
        emb = model.embeddings.word_embeddings(ids_clean)
        vmask = (cids < 0) & (mask > 0)
        vidx = (-cids - 1).clamp(min=0, max=NV - 1)
        x = torch.where(vmask[..., None], prompt[vidx], emb)
        hidden = model(inputs_embeds=x, attention_mask=mask, token_type_ids=torch.zeros_like(mask)).last_hidden_state
    else:
        hidden = model(input_ids=ids_clean, attention_mask=mask, token_type_ids=torch.zeros_like(mask)).last_hidden_state
    pool = Pooling(C, pooling_mode="mean").double()
    feats = pool({"token_embeddings": hidden, "attention_mask": pool_mask})
    e = feats["sentence_embedding"]
    P = B // 2
    loss_mod = MNRL(model=None)
    check(loss_mod.scale == 20.0 and tuple(loss_mod.directions) == ("query_to_doc",),
          f"{case}: sentence-transformers {sentence_transformers.__version__} MultipleNegativesRankingLoss defaults: scale 20, query_to_doc")
    loss = loss_mod.compute_loss_from_embeddings([e[:P], e[P:]], None)
    # the same in plain torch: cross_entropy(20 * cos(a_i, p_j), i)
    an, pn = torch.nn.functional.normalize(e[:P], dim=1), torch.nn.functional.normalize(e[P:], dim=1)
    plain = torch.nn.functional.cross_entropy(20.0 * an @ pn.T, torch.arange(P))
    check(abs(float(plain) - float(loss)) < 1e-12, f"{case}: its loss is cross_entropy(20 cos(a_i, p_j), i) ({float(loss):.8f})")
    grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))
    cl, lv = float(c["loss"][0]), float(loss.detach())
    check(abs(cl - lv) <= TOL_LOSS * abs(lv), f"{case}: loss {cl:.8f} vs {lv:.8f} (rel <= {TOL_LOSS})")
    dz = float(np.abs(c["emb"] - e.detach().numpy()).max())
    check(dz <= TOL_EMB, f"{case}: mean-pooled embeddings {tuple(e.shape)} max abs diff {dz:.2e} (<= {TOL_EMB})")
    G = max(float(g.abs().max()) for g in grads.values())
    worst, wname = 0.0, ""
    for n in names:
        if n not in c:
            check(False, f"{case}: gradient of {n} missing from peftc's output")
            continue
        r = grads[n].numpy()
        scale = max(float(np.abs(r).max()), GRAD_FLOOR * G)
        err = float(np.abs(c[n].reshape(r.shape) - r).max()) / scale
        if err > worst:
            worst, wname = err, n
    check(G > 0 and worst <= TOL_GRAD, f"{case}: every gradient ({len(names)} tensors, largest {G:.3e}) within {TOL_GRAD} of its scale "
                                      f"(worst {worst:.2e} at {wname})")
    extra = sorted(set(c) - set(names) - {"loss", "emb", "input_ids"})
    check(not extra, f"{case}: no other tensor trains (frozen weights get no gradient){': ' + ', '.join(extra) if extra else ''}")
    finish()


def corr(eval_json, e1, e2, pairs_tsv):
    from scipy.stats import pearsonr, spearmanr
    ev = json.load(open(eval_json))
    a, b = np.loadtxt(e1, ndmin=2), np.loadtxt(e2, ndmin=2)
    rows = [l.rstrip("\n").split("\t") for l in open(pairs_tsv)][1:]
    y = np.array([float(r[-1]) for r in rows])
    check(a.shape == b.shape and a.shape[0] == len(y), f"embed --adapter: one embedding per line ({a.shape})")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    p, s = pearsonr(cos, y)[0], spearmanr(cos, y)[0]
    check(ev.get("task") == "embedding" and ev.get("pairs") == len(y), f"eval: task embedding, {ev.get('pairs')} pairs")
    check(abs(ev["cosine_pearson"] - p) < 1e-5 and abs(ev["cosine_spearman"] - s) < 1e-5,
          f"eval's cosine pearson {ev['cosine_pearson']:.6f} / spearman {ev['cosine_spearman']:.6f} = scipy's on embed --adapter's "
          f"output {p:.6f} / {s:.6f}")
    finish()


def merged(md, texts_path, emb_path):
    from transformers import AutoModel
    from tokenizers import BertWordPieceTokenizer
    Pooling, _ = st_loss()
    cfg = json.load(open(os.path.join(md, "config.json")))
    check(cfg.get("architectures") == ["BertModel"] and "id2label" not in cfg, f"merged: architectures {cfg.get('architectures')}, no labels")
    model = AutoModel.from_pretrained(md).double().eval()
    check(type(model).__name__ == "BertModel", f"merged: transformers loads it as {type(model).__name__}")
    tok = BertWordPieceTokenizer(os.path.join(md, "vocab.txt"), lowercase=True)
    texts = [l.rstrip("\n") for l in open(texts_path)]
    encs = [tok.encode(t) for t in texts]
    T = max(len(e.ids) for e in encs)
    ids = torch.zeros(len(encs), T, dtype=torch.long)
    mask = torch.zeros(len(encs), T, dtype=torch.long)
    for b, e in enumerate(encs):
        ids[b, :len(e.ids)] = torch.tensor(e.ids)
        mask[b, :len(e.ids)] = 1
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        e = Pooling(h.shape[-1], pooling_mode="mean")({"token_embeddings": h, "attention_mask": mask})["sentence_embedding"]
    c = np.loadtxt(emb_path, ndmin=2)
    dz = float(np.abs(c - e.numpy()).max()) if c.shape == tuple(e.shape) else float("inf")
    check(dz <= 1e-4, f"merged: its mean-pooled embeddings equal peftc embed --adapter's (unmerged), max abs diff {dz:.2e} (<= 1e-4)")
    finish()


def check_config(run):
    cfg = json.load(open(os.path.join(run, "adapter_config.json")))
    st = load_file(os.path.join(run, "adapter_model.safetensors"))
    check(cfg.get("task_type") == "FEATURE_EXTRACTION" and cfg["peftc"].get("task") == "embedding",
          f"{run}: task_type {cfg.get('task_type')}, peftc.task {cfg['peftc'].get('task')}")
    heads = [k for k in st if "classifier" in k or "pooler" in k]
    check(not heads, f"{run}: no head tensors ({len(st)} tensors{': ' + ', '.join(heads) if heads else ''})")
    if cfg.get("peft_type") == "LORA":
        from peft import LoraConfig
        lc = LoraConfig.from_pretrained(run)
        check(str(lc.task_type).endswith("FEATURE_EXTRACTION"), f"{run}: PEFT's LoraConfig reads task_type {lc.task_type}")
    finish()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "gen":
        gen(sys.argv[2])
    elif mode == "compare-grads":
        compare_grads(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "corr":
        corr(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif mode == "merged":
        merged(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "check-config":
        check_config(sys.argv[2])
    else:
        sys.exit(f"unknown mode {mode}")
