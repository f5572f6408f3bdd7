#!/usr/bin/env python3
"""ref_tasks.py: the oracle of peftc's token-classification and regression
tasks (tests/check_tasks.sh). Independent of peftc's code: Hugging Face
transformers' BertForTokenClassification / BertForSequenceClassification in
float64 autograd, PEFT's LoRA, BertTokenizerFast's word alignment, seqeval,
scipy.

Modes (run from the repo root):
  gen OUTDIR      writes a tiny random BERT (OUTDIR/model: hidden 32, 2 layers,
                  dropout 0, a vocabulary whose words split into up to 4
                  pieces), OUTDIR/train.conll (IOB1, 4 columns, -DOCSTART-,
                  upper case, unknown words, a sentence truncated inside a
                  word), OUTDIR/train_reg.tsv (regression), and an init
                  adapter per case (OUTDIR/init_CASE: random non-zero weights)
  compare-grads CASE OUTDIR C.safetensors
                  the reference loss / logits / gradients of CASE at the init
                  weights against tests/tasks_grad's, and its token ids and
                  per-token labels (first piece of each word, -100 elsewhere)
                  against BertTokenizerFast(is_split_into_words=True).word_ids()
  seqeval-random OUTDIR TASKS_GRAD
                  random (ill-formed) tag sequences: peftc's C entity counting
                  (tests/tasks_grad seqeval) against seqeval's
  seqeval-pred EVAL.json PRED.conll
                  peftc eval's precision / recall / F1 / token accuracy against
                  seqeval (default mode) on the gold and predicted columns of
                  `peftc predict`'s output
  corr EVAL.json GOLD.tsv PRED.txt
                  peftc eval's Pearson / Spearman against scipy.stats on the
                  gold scores and `peftc predict`'s
Output: "ok   - ..." / "FAIL - ..." lines, then "## <passed> <failed>".
"""
import json
import os
import random
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

torch.set_num_threads(1)

C, L, NH, FF, P = 32, 2, 4, 64, 64
MAX_LEN = 24
NV = 4                       # prompt tuning's virtual tokens
LORA_R, LORA_ALPHA = 4, 8.0
# Hugging Face conll2003's label order (not peftc's sorted one: the adapter's list must be the one used)
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
CASES = ("tok_full", "tok_lora", "tok_prompt", "reg_full", "ml_lora")
ML_LABELS = ["LOC", "MISC", "ORG", "PER", "none"]
HEAD = "base_model.model."
BERT = "base_model.model.bert."
TOL_LOSS, TOL_LOGITS, TOL_GRAD, GRAD_FLOOR = 1e-5, 1e-5, 1e-4, 1e-3

WORDS = ("the a of in and to was is said visited met from at by for with on john smith mary jones "
         "london paris berlin york new reuters google bank union european german french "
         "company corp inc un believ able cup world football league").split()
PIECES = ["##bel", "##iev", "##ably", "##ers", "##s", "##ing", "##ian", "##er", "##ly"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "-", "'"] + WORDS + PIECES

# IOB1 (an entity begins with I- unless it follows one of the same type):
# upper case, word pieces (Londoners, unbelievably, Germanically), unknown
# words (Zxq), punctuation inside a word (U.K.-based), adjacent same-type
# entities (B-), a sentence long enough to be cut inside a word at MAX_LEN
SENTENCES = [
    [("John", "I-PER"), ("Smith", "I-PER"), ("visited", "O"), ("London", "I-LOC"), (".", "O")],
    [("Reuters", "I-ORG"), ("said", "O"), ("Londoners", "I-MISC"), ("met", "O"), ("Mary", "I-PER"),
     ("Jones", "I-PER"), ("Zxq", "O"), ("in", "O"), ("Paris", "I-LOC"), ("Berlin", "B-LOC"), ("!", "O")],
    [("unbelievably", "O"), ("European", "I-MISC"), ("Union", "I-ORG"), ("bank", "I-ORG"), (",", "O"),
     ("the", "O"), ("Germanically", "I-MISC")],
    [("New", "I-LOC"), ("York", "I-LOC"), ("Google", "I-ORG"), ("Inc", "I-ORG"), ("U.K.-based", "I-MISC")],
    [("the", "O"), ("world", "I-MISC"), ("cup", "I-MISC"), ("football", "O"), ("league", "I-ORG"),
     ("was", "O"), ("said", "O"), ("by", "O"), ("John", "I-PER"), ("and", "O"), ("Mary", "I-PER"),
     ("to", "O"), ("be", "O"), ("for", "O"), ("French", "I-MISC"), ("and", "O"),
     ("unbelievably", "I-MISC"), ("at", "O"), ("Londoners", "I-MISC"), ("and", "O")],
]
REG = [("the company said", "visited london", "3.5"), ("john met mary", "mary met john", "4.8"),
       ("a cup", "the football league", "0.4"), ("Paris and Berlin", "the world", "1.25"),
       ("Google Inc.", "google corp", "4.0"), ("unbelievably new", "new york", "2.2")]

ML = ["ORG", "PER", "none", "LOC,MISC", "ORG, PER ,LOC", "MISC"]
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


def iob1_to_iob2(tags):
    out, prev = [], "O"
    for t in tags:
        if t.startswith("I-") and (prev == "O" or prev[2:] != t[2:]):
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out


def config(num_labels=2):
    from transformers import BertConfig
    return BertConfig(vocab_size=len(VOCAB), hidden_size=C, num_hidden_layers=L, num_attention_heads=NH,
                      intermediate_size=FF, max_position_embeddings=P, type_vocab_size=2, hidden_act="gelu",
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12,
                      initializer_range=0.2, num_labels=num_labels, pad_token_id=0)


def gen(out):
    from transformers import BertModel
    md = os.path.join(out, "model")
    os.makedirs(md, exist_ok=True)
    torch.manual_seed(0)
    bert = BertModel(config(), add_pooling_layer=True)
    sd = {k: v.detach().float().numpy().copy() for k, v in bert.state_dict().items() if v.dtype.is_floating_point}
    rng = np.random.default_rng(1)
    for k in sd:   # non-trivial LayerNorms and biases
        if k.endswith("bias") or "LayerNorm" in k:
            sd[k] = (sd[k] + rng.standard_normal(sd[k].shape) * 0.1).astype(np.float32)
    save_file(sd, os.path.join(md, "model.safetensors"), metadata={"format": "pt"})
    cfg = config().to_dict()
    cfg.update(model_type="bert", architectures=["BertModel"])
    with open(os.path.join(md, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, default=str)
    with open(os.path.join(md, "vocab.txt"), "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    with open(os.path.join(md, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True}, f)
    with open(os.path.join(out, "train.conll"), "w") as f:
        f.write("-DOCSTART- -X- -X- O\n\n")
        for s in SENTENCES:
            for w, t in s:
                f.write(f"{w} NNP I-NP {t}\n")
            f.write("\n")
    with open(os.path.join(out, "train_ml.tsv"), "w") as f:   # the entity types of each pair's first sentence
        f.write("sentence1\tsentence2\tlabel\n")
        for (a, b, _), y in zip(REG, ML):
            f.write(f"{a}\t{b}\t{y}\n")
    with open(os.path.join(out, "train_reg.tsv"), "w") as f:
        f.write("sentence1\tsentence2\tlabel\n")
        for a, b, y in REG:
            f.write(f"{a}\t{b}\t{y}\n")
    base = {k: torch.from_numpy(v.astype(np.float64)) for k, v in sd.items()}
    for case in CASES:
        write_init(out, case, base, rng)
    print(f"# tiny BERT (vocab {len(VOCAB)}, hidden {C}, {L} layers), {len(SENTENCES)} CoNLL sentences, "
          f"{len(REG)} regression pairs, init adapters {', '.join(CASES)}")
    check(True, "fixture written")


def base_names(with_pooler):
    names = [k for k in load_file_names()]
    return [n for n in names if with_pooler or not n.startswith("pooler.")]


_base_cache = {}


def load_file_names():
    return _base_cache["names"]


def trainable(case, base):
    _base_cache["names"] = sorted(base)
    K = 1 if case.startswith("reg") else len(ML_LABELS) if case.startswith("ml") else len(LABELS)
    t = {}
    if case in ("tok_full", "reg_full"):
        for n in base_names(case == "reg_full"):
            t[BERT + n] = tuple(base[n].shape)
    elif case in ("tok_lora", "ml_lora"):
        for l in range(L):
            for m in ("query", "value"):
                t[f"{BERT}encoder.layer.{l}.attention.self.{m}.lora_A.weight"] = (LORA_R, C)
                t[f"{BERT}encoder.layer.{l}.attention.self.{m}.lora_B.weight"] = (C, LORA_R)
    elif case == "tok_prompt":
        t["prompt_embeddings"] = (NV, C)
    t[HEAD + "classifier.weight"] = (K, C)
    t[HEAD + "classifier.bias"] = (K,)
    return t


def write_init(out, case, base, rng):
    d = os.path.join(out, f"init_{case}")
    os.makedirs(d, exist_ok=True)
    t = {}
    for n, shape in trainable(case, base).items():
        if n.startswith(BERT) and ".lora_" not in n:
            v = base[n[len(BERT):]].numpy()
            t[n] = (v + rng.standard_normal(v.shape) * 0.05).astype(np.float32)
        else:
            t[n] = (rng.standard_normal(shape) * 0.3).astype(np.float32)
    save_file(t, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    task = "regression" if case.startswith("reg") else "multi-label" if case.startswith("ml") else "token-cls"
    own = {"method": case.split("_")[1],
           "labels": ["label"] if task == "regression" else ML_LABELS if task == "multi-label" else LABELS,
           "max_len": MAX_LEN, "task": task}
    if case.endswith("full"):
        own["base"] = "all"
    cfg = {"peft_type": "PEFTC", "task_type": "TOKEN_CLS" if task == "token-cls" else "SEQ_CLS", "peftc": own}
    if case.endswith("lora"):
        cfg.update(peft_type="LORA", r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=["query", "value"])
    if case == "tok_prompt":
        own["method"] = "prompt"
        own["prompt"] = {"num_virtual_tokens": NV, "before_cls": True, "template": ""}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def hf_tokenizer(out):
    """Hugging Face's BERT WordPiece tokenizer (the tokenizers library that BertTokenizerFast wraps)."""
    from tokenizers import BertWordPieceTokenizer
    return BertWordPieceTokenizer(os.path.join(out, "model", "vocab.txt"), lowercase=True)


def token_batch(out, nv):
    """ids, mask, labels from BertTokenizerFast: each word split alone, the first piece labelled."""
    tok = hf_tokenizer(out)
    tok.enable_truncation(max_length=MAX_LEN - nv)
    rows, labs = [], []
    for s in SENTENCES:
        words = [w for w, _ in s]
        tags = iob1_to_iob2([t for _, t in s])
        enc = tok.encode(words, is_pretokenized=True)
        prev, lab = None, []
        for wid in enc.word_ids:
            lab.append(-100 if wid is None or wid == prev else LABELS.index(tags[wid]))
            prev = wid
        rows.append(enc.ids)
        labs.append(lab)
    T = max(map(len, rows))
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    y = torch.full((len(rows), T), -100, dtype=torch.long)
    for b, (r, lab) in enumerate(zip(rows, labs)):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r)] = 1
        y[b, :len(r)] = torch.tensor(lab)
    return ids, mask, y


def compare_grads(case, out, cpath):
    from transformers import BertForTokenClassification, BertForSequenceClassification
    c = load_file(cpath)
    base = {k: torch.from_numpy(v.astype(np.float64)) for k, v in load_file(os.path.join(out, "model", "model.safetensors")).items()}
    init = {k: torch.from_numpy(v.astype(np.float64)) for k, v in load_file(os.path.join(out, f"init_{case}", "adapter_model.safetensors")).items()}
    names = sorted(trainable(case, base))
    check(sorted(init) == names, f"{case}: the init adapter holds exactly the trainable tensors")
    torch.manual_seed(0)
    if case.startswith("reg"):
        model = BertForSequenceClassification(config(1)).double()
        model.config.problem_type = "regression"
    elif case.startswith("ml"):
        model = BertForSequenceClassification(config(len(ML_LABELS))).double()
        model.config.problem_type = "multi_label_classification"
    else:
        model = BertForTokenClassification(config(len(LABELS))).double()
    sd = model.state_dict()
    for k, v in base.items():
        if "bert." + k in sd:
            sd["bert." + k] = v
    for n, v in init.items():
        if n.startswith(HEAD) and ".lora_" not in n:
            sd[n[len(HEAD):]] = v
    model.load_state_dict(sd)
    params = {}
    if case.endswith("lora"):
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(task_type="TOKEN_CLS" if case.startswith("tok") else "SEQ_CLS", r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                 target_modules=["query", "value"]))
        with torch.no_grad():
            for n, p in model.named_parameters():
                key = n.replace(".default", "").replace("modules_to_save.", "").replace("original_module.", "")
                if key in init and p.requires_grad:
                    p.copy_(init[key])
                    params[key] = p
        check(sorted(params) == names, f"{case}: PEFT's trainable LoRA tensors are peftc's ({len(params)})")
    else:
        for n, p in model.named_parameters():
            key = HEAD + n
            p.requires_grad_(key in init)
            if key in init:
                params[key] = p
    if case.startswith("reg") or case.startswith("ml"):
        tok = hf_tokenizer(out)
        tok.enable_truncation(max_length=MAX_LEN)
        encs = [tok.encode(a, b) for a, b, _ in REG]
        T = max(len(e.ids) for e in encs)
        ids = torch.zeros(len(encs), T, dtype=torch.long)
        tts = torch.zeros(len(encs), T, dtype=torch.long)
        mask = torch.zeros(len(encs), T, dtype=torch.long)
        for b, e in enumerate(encs):
            ids[b, :len(e.ids)] = torch.tensor(e.ids)
            tts[b, :len(e.ids)] = torch.tensor(e.type_ids)
            mask[b, :len(e.ids)] = 1
        if case.startswith("ml"):
            y = torch.tensor([[1.0 if n in [x.strip() for x in v.split(",")] else 0.0 for n in ML_LABELS] for v in ML],
                             dtype=torch.float64)
        else:
            y = torch.tensor([float(v) for _, _, v in REG], dtype=torch.float64)
        res = model(input_ids=ids, attention_mask=mask, token_type_ids=tts, labels=y)
        loss, logits = res.loss, res.logits
        if case.startswith("ml"):
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            check(abs(float(bce.detach()) - float(loss.detach())) < 1e-12, f"{case}: transformers' multi-label loss is the mean BCE with logits")
        cids = torch.from_numpy(c["input_ids"].astype(np.int64))
        check(cids.shape == ids.shape and bool((cids == ids).all()), f"{case}: token ids equal Hugging Face tokenizers' {tuple(ids.shape)}")
        if case.startswith("reg"):
            check(abs(float(torch.nn.functional.mse_loss(logits.squeeze(-1), y).detach()) - float(loss.detach())) < 1e-12,
                  f"{case}: transformers' regression loss is the MSE")
    else:
        nv = NV if case == "tok_prompt" else 0
        ids, mask, y = token_batch(out, nv)
        cids = torch.from_numpy(c["input_ids"].astype(np.int64))
        clab = torch.from_numpy(c["labels"].astype(np.int64))
        B, T = ids.shape
        ok_shape = cids.shape == (B, T + nv)
        check(ok_shape, f"{case}: batch shape {tuple(cids.shape)} (reference {B} x {T} + {nv} virtual)")
        if not ok_shape:
            finish()
        if nv:
            check(bool((cids[:, :nv] == -torch.arange(1, nv + 1)).all()) and bool((clab[:, :nv] == -100).all()),
                  f"{case}: the {nv} virtual tokens come first and get no label (-100)")
        real_ids = cids[:, nv:]
        check(bool((real_ids == ids).all()), f"{case}: token ids equal Hugging Face tokenizers' (is_pretokenized: is_split_into_words)")
        check(bool((clab[:, nv:] == y).all()),
              f"{case}: per-token labels equal word_ids()'s first-piece labels, IOB1 -> IOB2 "
              f"({int((y >= 0).sum())} labelled of {int(mask.sum())} tokens)")
        cut = [len(s) - int((y[b] >= 0).sum()) for b, s in enumerate(SENTENCES)]
        full = hf_tokenizer(out).encode([w for w, _ in SENTENCES[4]], is_pretokenized=True).word_ids
        cap = MAX_LEN - nv - 2   # the pieces that fit between [CLS] and [SEP]
        check(any(cut) and full[cap] is not None and full[cap] == full[cap + 1],
              f"{case}: the window ends inside a word (its pieces {cap} and {cap + 1}: word {full[cap]}; words cut per sentence {cut})")
        if nv:
            emb = model.bert.embeddings.word_embeddings(ids)
            prompt = init["prompt_embeddings"].clone().requires_grad_(True)
            params["prompt_embeddings"] = prompt
            x = torch.cat([prompt[None].expand(B, -1, -1), emb], 1)
            m2 = torch.cat([torch.ones(B, nv, dtype=mask.dtype), mask], 1)
            y2 = torch.cat([torch.full((B, nv), -100), y], 1)
            res = model(inputs_embeds=x, attention_mask=m2, labels=y2)
        else:
            res = model(input_ids=ids, attention_mask=mask, labels=y)
        loss, logits = res.loss, res.logits.reshape(-1, len(LABELS))
    grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))
    cl = float(c["loss"][0])
    loss_v = float(loss.detach())
    check(abs(cl - loss_v) <= TOL_LOSS * abs(loss_v), f"{case}: loss {cl:.8f} vs {loss_v:.8f} (rel <= {TOL_LOSS})")
    dz = float(np.abs(c["logits"].reshape(logits.shape) - logits.detach().numpy()).max())
    check(dz <= TOL_LOGITS, f"{case}: logits {tuple(logits.shape)} max abs diff {dz:.2e} (<= {TOL_LOGITS})")
    G = max(float(g.abs().max()) for g in grads.values())
    worst, wname = 0.0, ""
    for n in names:
        if n not in c:
            check(False, f"{case}: gradient of {n} missing from peftc's output")
            continue
        r = grads[n].numpy()
        scale = max(float(np.abs(r).max()), GRAD_FLOOR * G)
        e = float(np.abs(c[n].reshape(r.shape) - r).max()) / scale
        if e > worst:
            worst, wname = e, n
    check(worst <= TOL_GRAD, f"{case}: every gradient ({len(names)} tensors) within {TOL_GRAD} of its scale "
                             f"(worst {worst:.2e} at {wname})")
    finish()


def seqeval_random(out, driver):
    import subprocess
    from seqeval.metrics.sequence_labeling import get_entities
    labels = LABELS + ["B-X-Y", "I-X-Y"]   # a type with a dash
    rnd = random.Random(5)
    gold, pred = [], []
    for _ in range(400):
        n = rnd.randint(0, 30)
        g = [rnd.randrange(len(labels)) if rnd.random() < 0.5 else 0 for _ in range(n)]
        p = [x if rnd.random() < 0.7 else rnd.randrange(len(labels)) for x in g]
        gold.append(g)
        pred.append(p)
    lp, sp = os.path.join(out, "seq_labels.txt"), os.path.join(out, "seq_seqs.txt")
    with open(lp, "w") as f:
        f.write("\n".join(labels) + "\n")
    with open(sp, "w") as f:
        for g, p in zip(gold, pred):
            f.write(" ".join(map(str, g)) + "|" + " ".join(map(str, p)) + "\n")
    r = subprocess.run([driver, "seqeval", lp, sp], capture_output=True, text=True)
    lines = r.stdout.split("\n")
    got = tuple(int(x) for x in lines[0].split())
    G = [[labels[i] for i in g] for g in gold]
    Pd = [[labels[i] for i in p] for p in pred]
    et = {(t, s, e) for t, s, e in get_entities(G)}
    ep = {(t, s, e) for t, s, e in get_entities(Pd)}
    want = (len(et), len(ep), len(et & ep))
    check(got == want, f"seqeval: entities (true, pred, correct) of 400 random ill-formed sentences: peftc {got}, seqeval {want}")
    per = {}
    for line in lines[1:]:
        if line.startswith("type "):
            _, ty, a, b, cc = line.split()
            per[ty] = (int(a), int(b), int(cc))
    want_per = {}
    for ty in {t for t, _, _ in et | ep}:
        want_per[ty] = (sum(1 for x in et if x[0] == ty), sum(1 for x in ep if x[0] == ty), sum(1 for x in et & ep if x[0] == ty))
    check(per == want_per, f"seqeval: per-type counts equal ({len(want_per)} types, 'X-Y' included)")
    finish()


def seqeval_pred(eval_json, pred_path):
    from seqeval.metrics import precision_score, recall_score, f1_score, accuracy_score
    ev = json.load(open(eval_json))
    gold, pred, g, p = [], [], [], []
    for line in open(pred_path):
        line = line.rstrip("\n")
        if not line:
            if g:
                gold.append(g)
                pred.append(p)
            g, p = [], []
            continue
        cols = line.split("\t")
        gt = line.split("\t")[0].split(" ")[-1] if len(cols) == 2 and " " in cols[0] else cols[-2]
        g.append(gt)
        p.append(cols[-1])
    # the gold column is IOB1 in CoNLL-2003: seqeval scores IOB2 (what peftc converts to)
    gold = [iob1_to_iob2(s) for s in gold]
    print(f"# {ev['words_cut']} words without a first piece in the window (predicted O by both)")
    ps, rs, fs, acc = precision_score(gold, pred), recall_score(gold, pred), f1_score(gold, pred), accuracy_score(gold, pred)
    n_words = sum(map(len, gold))
    check(n_words == ev["words"], f"seqeval-pred: {n_words} words scored by both")
    for name, a, b in (("precision", ev["precision"], ps), ("recall", ev["recall"], rs), ("f1", ev["f1"], fs),
                       ("token_accuracy", ev["token_accuracy"], acc)):
        check(abs(a - b) <= 1e-6, f"seqeval-pred: {name} peftc {a:.6f} seqeval {b:.6f}")
    ill = sum(1 for s in pred for i, t in enumerate(s) if t.startswith("I-") and (i == 0 or s[i - 1][2:] != t[2:]))
    print(f"# {len(gold)} sentences, {ill} ill-formed I- tags among the predictions")
    finish()


def corr(eval_json, gold_tsv, pred_txt):
    from scipy.stats import pearsonr, spearmanr
    ev = json.load(open(eval_json))
    rows = [line.rstrip("\n").split("\t") for line in open(gold_tsv)]
    col = rows[0].index("score") if "score" in rows[0] else rows[0].index("label")
    y = [float(r[col]) for r in rows[1:]]
    x = [float(v) for v in open(pred_txt).read().split()]
    check(len(x) == len(y) == ev["examples"], f"corr: {len(x)} predictions for {len(y)} rows")
    pr, sr = pearsonr(x, y)[0], spearmanr(x, y)[0]
    # predict prints 6 decimals: the correlations of the rounded scores differ at ~1e-6
    check(abs(ev["pearson"] - pr) <= 2e-5, f"corr: pearson peftc {ev['pearson']:.6f} scipy {pr:.6f}")
    check(abs(ev["spearman"] - sr) <= 2e-5, f"corr: spearman peftc {ev['spearman']:.6f} scipy {sr:.6f}")
    mse = float(np.mean((np.array(x) - np.array(y)) ** 2))
    check(abs(ev["mse"] - mse) <= 1e-4 * max(1, mse), f"corr: mse peftc {ev['mse']:.6f} numpy {mse:.6f}")
    finish()


def make_ml(conll, out_tsv, n):
    """A multi-label set from real sentences: each CoNLL sentence's entity types (or "none")."""
    rows, words, types = [], [], set()
    for line in list(open(conll)) + ["\n"]:
        f = line.split()
        if not f or f[0] == "-DOCSTART-":
            if words:
                rows.append((" ".join(words), ",".join(sorted(types)) or "none"))
            words, types = [], set()
            continue
        words.append(f[0])
        if f[-1] != "O":
            types.add(f[-1][2:])
    with open(out_tsv, "w") as fo:
        fo.write("sentence\tlabel\n")
        for s, y in rows[:n]:
            fo.write(f"{s}\t{y}\n")


def ml_sklearn(eval_json, gold_tsv, pred_txt):
    from sklearn.metrics import f1_score, accuracy_score
    ev = json.load(open(eval_json))
    gold = [line.rstrip("\n").split("\t")[1].split(",") for line in list(open(gold_tsv))[1:]]
    pred = [line.rstrip("\n").split("\t")[0].split(",") if line.strip() else [] for line in open(pred_txt)]
    names = sorted({x for g in gold for x in g})
    check(len(gold) == len(pred) == ev["examples"], f"multi-label: {len(pred)} predictions for {len(gold)} rows")
    Y = np.array([[n in g for n in names] for g in gold], dtype=int)
    P = np.array([[n in p for n in names] for p in pred], dtype=int)
    mi, ma = f1_score(Y, P, average="micro", zero_division=0), f1_score(Y, P, average="macro", zero_division=0)
    ex = accuracy_score(Y, P)
    check(abs(ev["micro_f1"] - mi) <= 1e-6, f"multi-label: micro F1 peftc {ev['micro_f1']:.6f} sklearn {mi:.6f}")
    check(abs(ev["macro_f1"] - ma) <= 1e-6, f"multi-label: macro F1 peftc {ev['macro_f1']:.6f} sklearn {ma:.6f}")
    check(abs(ev["exact_match"] - ex) <= 1e-6, f"multi-label: exact match peftc {ev['exact_match']:.6f} sklearn accuracy_score {ex:.6f}")
    finish()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "gen":
        gen(sys.argv[2])
        finish()
    elif mode == "compare-grads":
        compare_grads(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "seqeval-random":
        seqeval_random(sys.argv[2], sys.argv[3])
    elif mode == "seqeval-pred":
        seqeval_pred(sys.argv[2], sys.argv[3])
    elif mode == "make-ml":
        make_ml(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "ml-sklearn":
        ml_sklearn(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "corr":
        corr(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown mode {mode}")
