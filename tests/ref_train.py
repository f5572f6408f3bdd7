#!/usr/bin/env python3
"""ref_train.py: an independent PyTorch oracle for peftc's training maths.

Written from the definitions (Hugging Face BertForSequenceClassification,
PEFT's LoRA, BitFit, torch.optim.AdamW, torch.nn.utils.clip_grad_norm_), not
from peftc's code. The reference runs in float64 with autograd (float32 runs
only measure float32's own round-off).

  model:  h = BERT(ids)  (post-LN, exact erf GELU, additive padding mask)
          logits = classifier(dropout(tanh(pooler.dense(h[:, 0]))))   (dropout 0)
          loss   = mean cross-entropy
  LoRA:   y = x W^T + b + (alpha / r) (x A^T) B^T  on query and value
  full:   every BERT tensor + pooler + classifier train
  bitfit: every bias (LayerNorm biases too; not the pooler's) + classifier train
  AdamW:  torch.optim.AdamW, weight decay 0 on biases and LayerNorm weights
          (Hugging Face Trainer's rule), clip_grad_norm_(1.0) before each step

Modes (run from the repo root):
  gen OUTDIR                 writes the tiny model (OUTDIR/model), train.tsv,
                             an init adapter per method (OUTDIR/init_METHOD) and
                             the float64 reference OUTDIR/ref_METHOD.safetensors:
                             loss, logits, token ids, the gradient of every
                             trainable tensor at the init weights ("grad/NAME"),
                             the parameters after 5 AdamW steps ("step5/NAME"),
                             each parameter's float32 envelope ("env/NAME", see
                             reference()), the 5 losses and pre-clip grad norms;
                             then checks itself (central differences, its
                             hand-written AdamW vs torch's, torch float32)
  compare-grads METHOD OUTDIR C.safetensors
                             checks tests/train_grad's loss/logits/gradients
  compare-train METHOD OUTDIR RUN_DIR LOG
                             checks `peftc train`'s adapter after 5 steps, its
                             logged losses and grad norms and metrics.json
Output: "ok   - ..." / "FAIL - ..." / "# ..." lines, then "## <passed> <failed>".
"""
import json
import math
import os
import re
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from tokenizers import BertWordPieceTokenizer  # noqa: E402

torch.set_num_threads(1)

METHODS = ("full", "lora", "bitfit")
# the configuration of the run (check_train_ref.sh passes the same to peftc)
C, L, NH, FF, P, TV = 32, 2, 4, 64, 64, 2
LN_EPS = 1e-12
LORA_R, LORA_ALPHA, LORA_TARGETS = 4, 8.0, ("query", "value")
LR, WD, BETAS, ADAM_EPS, CLIP, STEPS = 1e-2, 0.01, (0.9, 0.999), 1e-8, 1.0, 5
MAX_LEN = 32
BERT = "base_model.model.bert."
HEAD = "base_model.model."

# tolerances (see check_train_ref.sh's header for why)
TOL_LOSS = 1e-5      # relative
TOL_LOGITS = 1e-5    # max abs
TOL_GRAD = 1e-4      # per tensor: max |c - ref| / max |ref|
TOL_PARAM = 1e-4     # per tensor, after 5 steps
TOL_LOG_LOSS = 1e-4  # the log prints 4 decimals
TOL_TRAJ_LOSS = 1e-4 # relative, metrics.json's step-5 loss: float32's drift of the ill-conditioned elements moves it
TOL_LOG_NORM = 1e-3  # the log prints 3 decimals
GRAD_FLOOR = 1e-3    # gradient tensors are compared relative to max(their max, GRAD_FLOOR * largest gradient)
RHO = 3e-6           # float32 gradient error model: RHO * the largest gradient (torch float32: <= 4.4e-7, peftc: <= 8.2e-7)
if os.environ.get("REF_PRECISION") == "bf16":
    # tests/check_bf16.sh: frozen weights and the activations they multiply
    # are rounded to bf16 (8 significant bits, relative 2^-9 per operand), so
    # each result carries ~1e-2 relative error; measured worst 1.7e-2
    TOL_LOSS, TOL_LOGITS, TOL_GRAD, RHO = 1e-2, 3e-2, 4e-2, 3e-2

WORDS = ("the a an this that it is was were be very not really quite so too and but or with of "
         "in on i movie film plot story actor acting director scene ending music good bad great "
         "awful fine poor nice terrible boring fun funny dull brilliant weak strong slow loved "
         "hated liked enjoyed long short best worst ever").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!"] + WORDS + ["##s", "##ly", "##ing"]
# 8 single sentences: upper case (lower-casing), word pieces (actors, scenes,
# strongly), unknown words ([UNK]), punctuation, lengths 5..15 (padding)
SENTENCES = [
    ("The movie was GREAT and the actors were brilliant !", "1"),
    ("a boring , slow film .", "0"),
    ("I loved this story , really .", "1"),
    ("terrible acting , awful ending and dull scenes .", "0"),
    ("What a fun and funny movie", "1"),
    ("the plot is not good but the music is fine , strongly weak", "0"),
    ("it is quite nice .", "1"),
    ("worst film ever , I hated the director and the long boring scenes ...", "0"),
]


def hf_base_names():
    """Every tensor of the BERT encoder (Hugging Face names, no "bert.")."""
    n = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
         "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    for l in range(L):
        for mod in ("attention.self.query", "attention.self.key", "attention.self.value",
                    "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                    "output.dense", "output.LayerNorm"):
            n += [f"encoder.layer.{l}.{mod}.weight", f"encoder.layer.{l}.{mod}.bias"]
    return n


def trainable_names(method):
    """PEFT-style names of the tensors a method trains."""
    if method == "full":
        names = [BERT + n for n in hf_base_names()] + [BERT + "pooler.dense.weight", BERT + "pooler.dense.bias"]
    elif method == "bitfit":
        names = [BERT + n for n in hf_base_names() if n.endswith(".bias")]
    elif method == "lora":
        names = [f"{BERT}encoder.layer.{l}.attention.self.{t}.lora_{ab}.weight"
                 for l in range(L) for t in LORA_TARGETS for ab in "AB"]
    else:
        raise ValueError(method)
    return names + [HEAD + "classifier.weight", HEAD + "classifier.bias"]


def no_decay(name):
    # transformers.Trainer: no weight decay on biases and LayerNorm weights
    return name.endswith("bias") or "LayerNorm.weight" in name


# ------------------------------------------------------------------ model
class Ref:
    """BertForSequenceClassification (float64 unless given float32 tensors), with LoRA where the adapter has it."""

    def __init__(self, base, train, lora_scale):
        self.base = base            # hf name -> tensor (frozen)
        self.train = train          # PEFT name -> leaf tensor (trainable)
        self.s = lora_scale

    def w(self, hf):
        return self.train.get(BERT + hf, self.base.get(hf))

    def lin(self, x, mod):
        """x W^T + b, plus s (x A^T) B^T where the adapter has LoRA for this module."""
        y = x @ self.w(mod + ".weight").T + self.w(mod + ".bias")
        a = self.train.get(f"{BERT}{mod}.lora_A.weight")
        if a is not None:
            y = y + self.s * ((x @ a.T) @ self.train[f"{BERT}{mod}.lora_B.weight"].T)
        return y

    def ln(self, x, mod):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + LN_EPS) * self.w(mod + ".weight") + self.w(mod + ".bias")

    def logits(self, ids, mask, tts):
        B, T = ids.shape
        dh = C // NH
        x = (self.w("embeddings.word_embeddings.weight")[ids]
             + self.w("embeddings.position_embeddings.weight")[:T][None]
             + self.w("embeddings.token_type_embeddings.weight")[tts])
        x = self.ln(x, "embeddings.LayerNorm")
        dt = x.dtype
        add = (1.0 - mask[:, None, None, :].to(dt)) * torch.finfo(dt).min

        def heads(t):
            return t.view(B, T, NH, dh).transpose(1, 2)
        for l in range(L):
            p = f"encoder.layer.{l}."
            q = heads(self.lin(x, p + "attention.self.query"))
            k = heads(self.lin(x, p + "attention.self.key"))
            v = heads(self.lin(x, p + "attention.self.value"))
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh) + add, dim=-1)
            ctx = (probs @ v).transpose(1, 2).reshape(B, T, C)
            x = self.ln(x + self.lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = self.lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
            x = self.ln(x + self.lin(h, p + "output.dense"), p + "output.LayerNorm")
        pooled = torch.tanh(self.lin(x[:, 0], "pooler.dense"))
        return pooled @ self.train[HEAD + "classifier.weight"].T + self.train[HEAD + "classifier.bias"]

    def loss(self, ids, mask, tts, labels):
        z = self.logits(ids, mask, tts)
        logp = z - torch.logsumexp(z, dim=-1, keepdim=True)
        return -logp[torch.arange(len(labels)), labels].mean(), z


# ------------------------------------------------------------------ gen
def write_model(out, rng):
    md = os.path.join(out, "model")
    os.makedirs(md, exist_ok=True)
    V = len(VOCAB)
    cfg = dict(model_type="bert", architectures=["BertModel"], vocab_size=V, hidden_size=C,
               num_hidden_layers=L, num_attention_heads=NH, intermediate_size=FF,
               max_position_embeddings=P, type_vocab_size=TV, hidden_act="gelu",
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=LN_EPS,
               pad_token_id=0, position_embedding_type="absolute")

    def w(*shape, s=0.2):
        return (rng.standard_normal(shape) * s).astype(np.float32)
    t = {"embeddings.word_embeddings.weight": w(V, C), "embeddings.position_embeddings.weight": w(P, C),
         "embeddings.token_type_embeddings.weight": w(TV, C),
         "embeddings.LayerNorm.weight": 1 + w(C, s=0.1), "embeddings.LayerNorm.bias": w(C, s=0.1),
         "pooler.dense.weight": w(C, C), "pooler.dense.bias": w(C, s=0.1)}
    for l in range(L):
        p = f"encoder.layer.{l}."
        for n, (o, i) in {"attention.self.query": (C, C), "attention.self.key": (C, C),
                          "attention.self.value": (C, C), "attention.output.dense": (C, C),
                          "intermediate.dense": (FF, C), "output.dense": (C, FF)}.items():
            t[p + n + ".weight"] = w(o, i)
            t[p + n + ".bias"] = w(o, s=0.1)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + n + ".weight"] = 1 + w(C, s=0.1)
            t[p + n + ".bias"] = w(C, s=0.1)
    save_file(t, os.path.join(md, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(md, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(md, "vocab.txt"), "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    with open(os.path.join(md, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True}, f)


def write_init_adapter(out, method, base, rng):
    """Random non-zero values for every trainable tensor (base tensors: the
    model's values plus noise, so that loading them visibly matters)."""
    d = os.path.join(out, f"init_{method}")
    os.makedirs(d, exist_ok=True)
    t = {}
    for n in trainable_names(method):
        if n.startswith(BERT) and ".lora_" not in n:
            v = base[n[len(BERT):]]
            t[n] = (v + rng.standard_normal(v.shape) * 0.05).astype(np.float32)
        elif n.endswith("lora_A.weight"):
            t[n] = (rng.standard_normal((LORA_R, C)) * 0.2).astype(np.float32)
        elif n.endswith("lora_B.weight"):
            t[n] = (rng.standard_normal((C, LORA_R)) * 0.2).astype(np.float32)
        elif n.endswith("classifier.weight"):
            t[n] = (rng.standard_normal((2, C)) * 0.3).astype(np.float32)
        elif n.endswith("classifier.bias"):
            t[n] = (rng.standard_normal((2,)) * 0.1).astype(np.float32)
    save_file(t, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    own = {"method": method, "base": {"full": "all", "bitfit": "bias", "lora": "none"}[method],
           "labels": ["0", "1"], "max_len": MAX_LEN}
    if method == "lora":
        cfg = {"peft_type": "LORA", "r": LORA_R, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0,
               "target_modules": list(LORA_TARGETS), "peftc": own}
    else:
        cfg = {"peft_type": method.upper(), "peftc": own}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def encode_batch(out):
    """Token ids from Hugging Face's WordPiece (not peftc's tokenizer), padded."""
    tok = BertWordPieceTokenizer(os.path.join(out, "model", "vocab.txt"), lowercase=True)
    tok.enable_truncation(max_length=MAX_LEN)
    seqs = [tok.encode(s).ids for s, _ in SENTENCES]
    T = max(map(len, seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = 1
    labels = sorted({y for _, y in SENTENCES})   # peftc: sorted distinct labels
    y = torch.tensor([labels.index(lab) for _, lab in SENTENCES])
    return ids, mask, torch.zeros_like(ids), y


def load64(path, dtype=torch.float64):
    return {k: torch.from_numpy(v.astype(np.float64)).to(dtype) for k, v in load_file(path).items()}


def adamw_hand(p0, gs, wd):
    """torch.optim.AdamW's update written out, elementwise, from the sequence
    of (clipped) gradients gs; differentiable with respect to gs."""
    p, m, v = p0, torch.zeros_like(p0), torch.zeros_like(p0)
    for t, g in enumerate(gs, 1):
        p = p * (1 - LR * wd)
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        s = torch.sqrt(v.clamp_min(1e-300)) / math.sqrt(1 - BETAS[1] ** t)
        p = p - LR / (1 - BETAS[0] ** t) * m / (s + ADAM_EPS)
    return p


def train_run(base, init, names, batch, dtype):
    """STEPS of AdamW with clipping on the whole batch: losses, pre-clip norms,
    final parameters and each step's clipped gradients."""
    ids, mask, tts, y = batch
    train = {n: init[n].to(dtype).clone().requires_grad_(True) for n in names}
    model = Ref({k: v.to(dtype) for k, v in base.items()}, train, LORA_ALPHA / LORA_R)
    groups = [{"params": [train[n] for n in names if not no_decay(n)], "weight_decay": WD},
              {"params": [train[n] for n in names if no_decay(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=LR, betas=BETAS, eps=ADAM_EPS)
    losses, norms, clipped = [], [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss, _ = model.loss(ids, mask, tts, y)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_([train[n] for n in names], CLIP)))
        losses.append(loss.item())
        clipped.append({n: train[n].grad.detach().double().clone() for n in names})
        opt.step()
    return losses, norms, {n: train[n].detach().double() for n in names}, clipped


def reference(out, method):
    """Writes OUT/ref_METHOD.safetensors; returns it and self-check results."""
    base = load64(os.path.join(out, "model", "model.safetensors"))
    init = load64(os.path.join(out, f"init_{method}", "adapter_model.safetensors"))
    names = trainable_names(method)
    assert sorted(init) == sorted(names)
    batch = encode_batch(out)
    ids, mask, tts, y = batch
    res = {"input_ids": ids.numpy(), "labels": y.numpy(), "lens": mask.sum(1).numpy()}
    checks = {}

    # (a) loss, logits and every gradient at the init weights (and, to
    # measure float32's round-off, the same in float32)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        train = {n: init[n].to(dtype).clone().requires_grad_(True) for n in names}
        model = Ref({k: v.to(dtype) for k, v in base.items()}, train, LORA_ALPHA / LORA_R)
        loss, z = model.loss(ids, mask, tts, y)
        grads[dtype] = dict(zip(names, (g.double() for g in torch.autograd.grad(loss, [train[n] for n in names]))))
        if dtype == torch.float64:
            res["loss"] = np.array([loss.item()])
            res["logits"] = z.detach().numpy()
    for n in names:
        res["grad/" + n] = grads[torch.float64][n].numpy()
    G = max(float(g.abs().max()) for g in grads[torch.float64].values())
    checks["f32_grad_noise"] = max(float((grads[torch.float32][n] - grads[torch.float64][n]).abs().max())
                                   for n in names) / G

    # (b) STEPS AdamW steps with clipping, the whole set as one batch each step
    losses, norms, final, clipped = train_run(base, init, names, batch, torch.float64)
    res["losses"] = np.array(losses)
    res["grad_norms"] = np.array(norms)
    for n in names:
        res["step5/" + n] = final[n].numpy()

    # The float32 envelope of (b). Adam divides each gradient element by its
    # own running magnitude: where a gradient is at float32's round-off level
    # (the attention keys' biases, whose gradient is zero because softmax
    # ignores a shift shared by all keys; any element that happens to be near
    # 0) the update follows the round-off, in any float32 implementation. The
    # envelope is the first-order effect on the final parameters of an error
    # of RHO * (the step's largest |clipped gradient|) in every non-zero
    # gradient element at every step: sum_t |d p5 / d g_t| * delta_t, from the
    # hand-written AdamW (checked against torch's) differentiated by autograd.
    Gs = [max(float(g.abs().max()) for g in c.values()) for c in clipped]
    hand_err = 0.0
    for n in names:
        gs = [c[n].clone().requires_grad_(True) for c in clipped]
        p5 = adamw_hand(init[n], gs, 0.0 if no_decay(n) else WD)
        hand_err = max(hand_err, float((p5.detach() - final[n]).abs().max()))
        sens = torch.autograd.grad(p5.sum(), gs)
        env = sum(s.abs() * (c[n] != 0) * RHO * Gt for s, c, Gt in zip(sens, clipped, Gs))
        res["env/" + n] = env.numpy()
    checks["adamw_hand"] = hand_err

    # torch's own float32 run against the float64 one, inside the envelope?
    losses32, _, final32, _ = train_run(base, init, names, batch, torch.float32)
    checks["f32_losses"] = max(abs(a - b) / abs(b) for a, b in zip(losses32, losses))
    worst, plain, ill = 0.0, 0.0, 0
    for n in names:
        scale = float(final[n].abs().max())
        d = (final32[n] - final[n]).abs()
        bound = TOL_PARAM * scale + torch.from_numpy(res["env/" + n])
        worst = max(worst, float((d / bound).max()))
        plain = max(plain, float(d.max()) / scale)
        ill += int((torch.from_numpy(res["env/" + n]) > TOL_PARAM * scale).sum())
    checks["f32_run"] = (worst, plain, ill)
    save_file({k: np.ascontiguousarray(v) for k, v in res.items()}, os.path.join(out, f"ref_{method}.safetensors"))
    return res, checks


def selfcheck_grad(out, method, res, n_probe=6):
    """Central differences on a few elements: the autograd graph is the loss."""
    base = load64(os.path.join(out, "model", "model.safetensors"))
    init = load64(os.path.join(out, f"init_{method}", "adapter_model.safetensors"))
    ids, mask, tts, y = encode_batch(out)
    names = trainable_names(method)
    G = max(float(np.abs(res["grad/" + n]).max()) for n in names)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for k in range(n_probe):
        n = names[int(torch.randint(len(names), (1,), generator=g))]
        gr = torch.from_numpy(res["grad/" + n]).reshape(-1)
        j = int(gr.abs().argmax()) if k % 2 == 0 else int(torch.randint(gr.numel(), (1,), generator=g))
        h = 1e-6
        vals = []
        for sgn in (1, -1):
            t = {m: init[m].clone() for m in names}
            t[n].view(-1)[j] += sgn * h
            vals.append(Ref(base, t, LORA_ALPHA / LORA_R).loss(ids, mask, tts, y)[0].item())
        fd = (vals[0] - vals[1]) / (2 * h)
        worst = max(worst, abs(fd - gr[j].item()) / G)
    return worst


def cmd_gen(out):
    tl = Tally()
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20240607)
    write_model(out, rng)
    with open(os.path.join(out, "train.tsv"), "w") as f:
        f.write("sentence\tlabel\n")
        for s, y in SENTENCES:
            f.write(f"{s}\t{y}\n")
    base = {k: v for k, v in load_file(os.path.join(out, "model", "model.safetensors")).items()}
    for m in METHODS:
        write_init_adapter(out, m, base, rng)
    ids, mask, _, _ = encode_batch(out)
    unk = int((ids == VOCAB.index("[UNK]")).sum())
    pieces = int(sum((ids == VOCAB.index(p)).sum() for p in ("##s", "##ly", "##ing")))
    print(f"# tiny BERT: vocab {len(VOCAB)}, hidden {C}, {L} layers, {NH} heads, ffn {FF}; "
          f"{len(SENTENCES)} sentences, lengths {mask.sum(1).tolist()}, {unk} [UNK], {pieces} word pieces")
    clipped_any = unclipped_any = 0
    for m in METHODS:
        res, ck = reference(out, m)
        fd = selfcheck_grad(out, m, res)
        tl.check(fd < 1e-7, f"oracle {m}: autograd vs central differences on 6 elements, max err {fd:.2e} "
                 f"of the largest gradient (< 1e-7)")
        tl.check(ck["adamw_hand"] < 1e-12, f"oracle {m}: hand-written AdamW (for the envelope) equals "
                 f"torch.optim.AdamW: max abs diff {ck['adamw_hand']:.2e}")
        tl.check(ck["f32_grad_noise"] <= RHO, f"oracle {m}: torch float32 gradients vs float64: max abs err "
                 f"{ck['f32_grad_noise']:.2e} of the largest gradient (<= RHO = {RHO:g}, the envelope's model)")
        w, plain, ill = ck["f32_run"]
        tl.check(w <= 1, f"oracle {m}: torch float32's {STEPS}-step parameters lie in the float32 envelope "
                 f"(worst diff/bound {w:.3g}; plain max rel diff {plain:.3g}; {ill} ill-conditioned elements; "
                 f"its losses' max rel diff {ck['f32_losses']:.2g})")
        nclip = int((res["grad_norms"] > CLIP).sum())
        clipped_any += nclip > 0
        unclipped_any += nclip < STEPS
        print(f"# oracle {m}: {len(trainable_names(m))} tensors, "
              f"{sum(res['grad/' + n].size for n in trainable_names(m))} values; loss {res['loss'][0]:.8f}; "
              f"{STEPS} losses {' '.join('%.6f' % v for v in res['losses'])}; grad norms "
              f"{' '.join('%.4f' % v for v in res['grad_norms'])} (clipped in {nclip} of {STEPS} steps)")
    tl.check(clipped_any and unclipped_any, f"gradient clipping is active in {clipped_any} of {len(METHODS)} "
             f"methods' runs, and some steps run unclipped")
    return tl.finish()


# ------------------------------------------------------------------ compare
class Tally:
    def __init__(self):
        self.p = self.f = 0

    def check(self, cond, msg):
        print(("ok   - " if cond else "FAIL - ") + msg)
        if cond:
            self.p += 1
        else:
            self.f += 1

    def finish(self):
        print(f"## {self.p} {self.f}")
        return 1 if self.f else 0


def rel_diff(a, ref):
    """max |a - ref| / max |ref| (max |a - ref| if ref is all zero)."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    d = np.abs(a - ref).max() if a.size else 0.0
    if not np.isfinite(d):
        return math.inf
    s = np.abs(ref).max() if ref.size else 0.0
    return d / s if s > 0 else d


def names_ok(tl, what, got, ref, names, prefix):
    missing = [n for n in names if n not in got]
    shape_bad = [n for n in names if n in got and tuple(got[n].shape) != tuple(ref[prefix + n].shape)]
    if missing or shape_bad:
        tl.check(False, f"{what}: {len(missing)} tensors missing ({', '.join(missing[:3])}), "
                        f"{len(shape_bad)} of another shape ({', '.join(shape_bad[:3])})")
        return False
    return True


def detail(n, got, r, ratio, what):
    i = np.unravel_index(np.argmax(ratio), r.shape)
    print(f"#   {n}: {what} at {tuple(int(x) for x in i)}: peftc {got[n][i]:.8g} vs ref {r[i]:.8g} "
          f"(max |ref| {np.abs(r).max():.4g})")


def compare_grads(tl, what, got, ref, names):
    """Per tensor: max |c - ref| / max(max |ref|, GRAD_FLOOR * the largest gradient)."""
    if not names_ok(tl, what, got, ref, names, "grad/"):
        return
    G = max(np.abs(ref["grad/" + n]).max() for n in names)
    diffs, floored = {}, []
    for n in names:
        r = ref["grad/" + n]
        s = np.abs(r).max()
        if s < GRAD_FLOOR * G:
            floored.append(f"{n[len(BERT):] if n.startswith(BERT) else n} (max |ref| {s:.2g})")
        d = np.abs(got[n].astype(np.float64) - r)
        diffs[n] = d.max() / max(s, GRAD_FLOOR * G) if np.isfinite(d).all() else math.inf
    worst = max(diffs, key=diffs.get)
    bad = [n for n in names if not diffs[n] <= TOL_GRAD]
    for n in bad[:12]:
        r = ref["grad/" + n]
        detail(n, got, r, np.abs(got[n] - r), f"rel {diffs[n]:.3g}")
    if floored:
        print(f"# {len(floored)} tensors compared at the floor {GRAD_FLOOR:g} x the largest gradient "
              f"{G:.3g} (gradient zero in exact arithmetic): {', '.join(floored)}")
    gabs = max(np.abs(got[n].astype(np.float64) - ref["grad/" + n]).max() for n in names) / G
    tl.check(not bad, f"{what}: {len(names)} tensors, max rel diff {diffs[worst]:.3g} ({worst}), "
                      f"median {float(np.median(list(diffs.values()))):.3g}, {len(bad)} over {TOL_GRAD:g}")
    tl.check(gabs <= RHO, f"{what}: max abs error {gabs:.3g} of the largest gradient (<= RHO = {RHO:g}, "
                          f"the float32 error model of the training check)")


def compare_params(tl, what, got, ref, names):
    """Every element: |c - ref| <= TOL_PARAM * max |ref tensor| + its float32
    envelope. Ill-conditioned: envelope > TOL_PARAM * max |ref tensor|; the
    plain relative difference is also shown over the well-conditioned
    elements (envelope <= TOL_PARAM / 10 of the tensor), where it is the test."""
    if not names_ok(tl, what, got, ref, names, "step5/"):
        return
    plain, well, ratio, ill, ill_t = {}, {}, {}, 0, {}
    for n in names:
        r, env = ref["step5/" + n], ref["env/" + n]
        s = np.abs(r).max()
        d = np.abs(got[n].astype(np.float64) - r)
        if not np.isfinite(d).all():
            d = np.full_like(d, math.inf)
        plain[n] = d.max() / s
        ratio[n] = (d / (TOL_PARAM * s + env)).max()
        k = int((env > TOL_PARAM * s).sum())
        if k:
            ill += k
            ill_t[n[len(BERT):] if n.startswith(BERT) else n] = k
        w = env <= 0.1 * TOL_PARAM * s
        well[n] = d[w].max() / s if w.any() else 0.0
    bad = [n for n in names if not ratio[n] <= 1]
    for n in bad[:12]:
        r, env = ref["step5/" + n], ref["env/" + n]
        q = np.abs(got[n] - r) / (TOL_PARAM * np.abs(r).max() + env)
        detail(n, got, r, q, f"diff/bound {ratio[n]:.3g}")
    worst_plain = max(names, key=plain.get)
    worst_well = max(names, key=well.get)
    worst = max(names, key=ratio.get)
    if ill:
        top = sorted(ill_t.items(), key=lambda kv: -kv[1])
        print(f"# {ill} ill-conditioned elements (float32 envelope > {TOL_PARAM:g} of the tensor), most in: "
              + ", ".join(f"{k} {v}" for k, v in top[:6]) + (f" and {len(top) - 6} more tensors" if len(top) > 6 else ""))
    print(f"# plain max rel diff {plain[worst_plain]:.3g} ({worst_plain})")
    tl.check(not bad, f"{what}: {len(names)} tensors; well-conditioned elements: max rel diff {well[worst_well]:.3g} "
                      f"({worst_well}); every element: worst diff/({TOL_PARAM:g} max|ref| + envelope) {ratio[worst]:.3g} "
                      f"({worst}) (<= 1); {ill} ill-conditioned elements")


def cmd_compare_grads(method, out, cpath):
    tl = Tally()
    ref = load_file(os.path.join(out, f"ref_{method}.safetensors"))
    try:
        got = load_file(cpath)
    except Exception as e:  # noqa: BLE001
        tl.check(False, f"{method}: cannot read {cpath}: {e}")
        return tl.finish()
    names = trainable_names(method)
    c_names = sorted(k for k in got if k.startswith("base_model."))
    extra, lacking = sorted(set(c_names) - set(names)), sorted(set(names) - set(c_names))
    tl.check(not extra and not lacking, f"{method}: peftc trains the same {len(names)} tensors as the oracle "
             f"({len(extra)} extra {extra[:3]}, {len(lacking)} missing {lacking[:3]})")
    ids = got.get("input_ids")
    same_ids = ids is not None and ids.shape == ref["input_ids"].shape and (ids == ref["input_ids"]).all()
    tl.check(same_ids, f"{method}: peftc's token ids equal Hugging Face WordPiece's "
             f"({ref['input_ids'].shape[0]} x {ref['input_ids'].shape[1]})")
    if "loss" in got:
        lr_ = abs(float(got["loss"][0]) - ref["loss"][0]) / abs(ref["loss"][0])
        tl.check(lr_ <= TOL_LOSS, f"{method}: loss {float(got['loss'][0]):.8f} vs oracle {ref['loss'][0]:.8f}, "
                 f"rel diff {lr_:.3g} (<= {TOL_LOSS:g})")
    else:
        tl.check(False, f"{method}: no loss in {cpath}")
    if "logits" in got and got["logits"].shape == ref["logits"].shape:
        d = np.abs(got["logits"] - ref["logits"]).max()
        tl.check(d <= TOL_LOGITS, f"{method}: logits max abs diff {d:.3g} (<= {TOL_LOGITS:g})")
    else:
        tl.check(False, f"{method}: logits missing or of another shape")
    compare_grads(tl, f"{method}: gradients at the init weights", got, ref, names)
    return tl.finish()


def cmd_compare_train(method, out, run, log):
    tl = Tally()
    ref = load_file(os.path.join(out, f"ref_{method}.safetensors"))
    names = trainable_names(method)
    path = os.path.join(run, "adapter_model.safetensors")
    try:
        got = load_file(path)
    except Exception as e:  # noqa: BLE001
        tl.check(False, f"{method}: cannot read {path}: {e}")
        return tl.finish()
    extra, lacking = sorted(set(got) - set(names)), sorted(set(names) - set(got))
    tl.check(not extra and not lacking, f"{method}: the saved adapter holds exactly the {len(names)} trainable "
             f"tensors ({len(extra)} extra {extra[:3]}, {len(lacking)} missing {lacking[:3]})")
    init = load_file(os.path.join(out, f"init_{method}", "adapter_model.safetensors"))
    moved = min(rel_diff(got[n], init[n]) for n in names if n in got) if not lacking else 0
    compare_params(tl, f"{method}: parameters after {STEPS} AdamW steps (least moved tensor: rel {moved:.3g} "
                       f"from init)", got, ref, names)
    steps = {}
    with open(log) as f:
        for line in f:
            m = re.match(r"step (\d+)/(\d+) .*?loss ([-0-9.eE+na]+) .*?grad_norm ([-0-9.eE+na]+)", line)
            if m:
                steps[int(m.group(1))] = (float(m.group(3)), float(m.group(4)))
    if sorted(steps) != list(range(1, STEPS + 1)):
        tl.check(False, f"{method}: the log has step lines {sorted(steps)}, expected 1..{STEPS}")
    else:
        ls = np.array([steps[i][0] for i in range(1, STEPS + 1)])
        gn = np.array([steps[i][1] for i in range(1, STEPS + 1)])
        dl = np.abs(ls - ref["losses"]).max()
        tl.check(dl <= TOL_LOG_LOSS, f"{method}: logged losses {' '.join('%.4f' % v for v in ls)} vs oracle "
                 f"{' '.join('%.6f' % v for v in ref['losses'])}, max abs diff {dl:.3g} (<= {TOL_LOG_LOSS:g})")
        dn = np.abs(gn - ref["grad_norms"]).max()
        tl.check(dn <= TOL_LOG_NORM, f"{method}: logged grad norms {' '.join('%.3f' % v for v in gn)} vs oracle "
                 f"{' '.join('%.4f' % v for v in ref['grad_norms'])}, max abs diff {dn:.3g} (<= {TOL_LOG_NORM:g})")
    try:
        with open(os.path.join(run, "metrics.json")) as f:
            fl = float(json.load(f)["final_train_loss"])
        d = abs(fl - ref["losses"][-1]) / abs(ref["losses"][-1])
        tl.check(d <= TOL_TRAJ_LOSS, f"{method}: metrics.json final_train_loss {fl:.8f} vs oracle step-{STEPS} loss "
                 f"{ref['losses'][-1]:.8f}, rel diff {d:.3g} (<= {TOL_TRAJ_LOSS:g})")
    except (OSError, KeyError, ValueError) as e:
        tl.check(False, f"{method}: metrics.json unreadable: {e}")
    return tl.finish()


def main():
    a = sys.argv[1:]
    if len(a) == 2 and a[0] == "gen":
        return cmd_gen(a[1])
    if len(a) == 4 and a[0] == "compare-grads" and a[1] in METHODS:
        return cmd_compare_grads(a[1], a[2], a[3])
    if len(a) == 5 and a[0] == "compare-train" and a[1] in METHODS:
        return cmd_compare_train(a[1], a[2], a[3], a[4])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
