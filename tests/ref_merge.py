#!/usr/bin/env python3
"""ref_merge.py: HF PEFT's own LoraModel.add_weighted_adapter as the oracle
of `peftc merge-adapters` (tests/check_merge.sh).

  gen MODEL_DIR OUT     writes LoRA adapters a, b, c (r 4, alpha 8, query +
                        value; c also rsLoRA-free key), d (r 2, alpha 4,
                        query, key, output.dense) with random non-zero A and B,
                        saved by PEFT's save_pretrained over transformers'
                        BertModel of MODEL_DIR; then for every case of CASES
                        PEFT's add_weighted_adapter result as
                        OUT/ref_CASE.safetensors
  compare CASE REF.st OURS_DIR  A and B (or, for the svd family, B A) of every
                        module against PEFT's; exit 1 beyond tolerance
  dare OUT LIN_DIR TIES_DIR DENSITY  DARE, statistically: every element of
                        peftc's dare_linear is sum_k w_k m_k T_k / density for
                        some masks m in {0,1}^n (recovered), the kept fraction
                        is density within 5 sigma, and peftc's dare_ties (same
                        seed, so the same masks) equals PEFT's ties election
                        (merge_utils) applied to the recovered masks
"""
import itertools, json, math, os, sys
import torch

ADAPTERS = {  # name: (r, alpha, targets)
    "a": (4, 8, ["query", "value"]),
    "b": (4, 8, ["query", "value"]),
    "c": (4, 16, ["query", "value", "key"]),
    "d": (2, 4, ["query", "key", "dense"]),
}
W3 = [1.0, 0.7, -0.4]
# case: (adapters, weights, combination, density, svd_rank, majority)
CASES = {
    "linear": ("abc", W3, "linear", None, None, "total"),
    "cat": ("abd", W3, "cat", None, None, "total"),
    "svd": ("abd", W3, "svd", None, None, "total"),
    "svd_r3": ("abc", W3, "svd", None, 3, "total"),
    "ties": ("abc", W3, "ties", 0.5, None, "total"),
    "ties_freq": ("abc", W3, "ties", 0.4, None, "frequency"),
    "ties_svd": ("abd", W3, "ties_svd", 0.5, 2, "total"),
    "magnitude_prune": ("abc", W3, "magnitude_prune", 0.3, None, "total"),
    "magnitude_prune_svd": ("abc", W3, "magnitude_prune_svd", 0.6, 4, "total"),
    "single": ("a", [0.5], "svd", None, None, "total"),
}

def base(model_dir):
    from transformers import BertModel
    return BertModel.from_pretrained(model_dir).double().float()

def gen(model_dir, out):
    from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    torch.manual_seed(0)
    for name, (r, alpha, targets) in ADAPTERS.items():
        m = get_peft_model(base(model_dir), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets))
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_" in n: p.copy_(torch.randn_like(p) * 0.3)
        m.save_pretrained(os.path.join(out, name))
    for case, (names, weights, comb, density, rank, maj) in CASES.items():
        m = PeftModel.from_pretrained(base(model_dir), os.path.join(out, names[0]), adapter_name=names[0])
        for n in names[1:]: m.load_adapter(os.path.join(out, n), adapter_name=n)
        kw = dict(combination_type=comb, majority_sign_method=maj)
        if density is not None: kw["density"] = density
        if rank is not None: kw["svd_rank"] = rank
        m.add_weighted_adapter(list(names), weights, "merged", **kw)
        sd = get_peft_model_state_dict(m, adapter_name="merged")
        save_file({k: v.contiguous().float() for k, v in sd.items()}, os.path.join(out, f"ref_{case}.safetensors"))
        cfg = m.peft_config["merged"]
        json.dump({"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules)},
                  open(os.path.join(out, f"ref_{case}.json"), "w"))
    print("generated", len(CASES), "cases")

def load_dir(d):
    from safetensors.torch import load_file
    return json.load(open(os.path.join(d, "adapter_config.json"))), load_file(os.path.join(d, "adapter_model.safetensors"))

def compare(case, ref_path, ours):
    from safetensors.torch import load_file
    ref = load_file(ref_path)
    rcfg = json.load(open(ref_path.replace(".safetensors", ".json")))
    cfg, t = load_dir(ours)
    msgs = []
    if cfg["r"] != rcfg["r"] or float(cfg["lora_alpha"]) != float(rcfg["lora_alpha"]):
        print(f"r/alpha {cfg['r']}/{cfg['lora_alpha']} vs PEFT {rcfg['r']}/{rcfg['lora_alpha']}"); return 1
    if sorted(cfg["target_modules"]) != rcfg["target_modules"]:
        print(f"target_modules {cfg['target_modules']} vs {rcfg['target_modules']}"); return 1
    svd = CASES[case][2].endswith("svd") and len(CASES[case][0]) > 1
    worst = 0.0
    mods = sorted(k[: -len(".lora_A.weight")] for k in ref if k.endswith(".lora_A.weight"))
    ours_mods = sorted(k[: -len(".lora_A.weight")] for k in t if k.endswith(".lora_A.weight"))
    if mods != ours_mods:
        print(f"modules differ: {len(mods)} vs {len(ours_mods)}"); return 1
    for m in mods:
        A, B = t[m + ".lora_A.weight"].double(), t[m + ".lora_B.weight"].double()
        RA, RB = ref[m + ".lora_A.weight"].double(), ref[m + ".lora_B.weight"].double()
        if A.shape != RA.shape or B.shape != RB.shape:
            print(f"{m}: shapes {tuple(A.shape)} {tuple(B.shape)} vs {tuple(RA.shape)} {tuple(RB.shape)}"); return 1
        pairs = [(B @ A, RB @ RA)] if svd else [(A, RA), (B, RB)]
        for x, y in pairs:
            worst = max(worst, ((x - y).abs().max() / y.abs().max().clamp(min=1e-12)).item())
    tol = 2e-4 if svd else 1e-6
    print(f"max relative diff {worst:.3g} over {len(mods)} modules ({'B A' if svd else 'A and B'}), tolerance {tol}")
    return 0 if worst <= tol else 1

def dare(out, lin, ties_dir, density):
    from peft.utils.merge_utils import calculate_majority_sign_mask, disjoint_merge
    names, weights = "abc", W3
    ins = [load_dir(os.path.join(out, n)) for n in names]   # (config, tensors)
    _, tl = load_dir(lin)
    _, tt = load_dir(ties_dir)
    kept = total = 0
    worst_lin = worst_ties = 0.0
    bad = 0
    for key in sorted(k for k in tl if "lora_" in k):
        is_a = key.endswith("lora_A.weight")
        have = [(c, t, w) for (c, t), w in zip(ins, weights) if key in t]   # the adapters with this module
        Ts = [t[key].double() for _, t, _ in have]
        ws = [w * c["lora_alpha"] / c["r"] for c, _, w in have]
        wk = torch.tensor([math.copysign(math.sqrt(abs(v)), v) if is_a else math.sqrt(abs(v)) for v in ws], dtype=torch.float64)
        y = tl[key].double().flatten()
        X = torch.stack([T.flatten() for T in Ts])              # (n, numel)
        # every mask pattern's value; the nearest is the recovered mask
        pats = torch.tensor(list(itertools.product([0, 1], repeat=len(Ts))), dtype=torch.float64)   # (2^n, n)
        vals = pats @ (wk[:, None] * X) / density               # (2^n, numel)
        err = (vals - y[None]).abs()
        best = err.argmin(0)
        e = err.gather(0, best[None])[0]
        scale = X.abs().max().item() / density * wk.abs().sum().item()
        worst_lin = max(worst_lin, e.max().item() / scale)
        masks = pats[best].T                                    # (n, numel)
        kept += masks.sum().item(); total += masks.numel()
        # PEFT's ties election on the recovered masks
        pruned = (X * masks / density).float()
        maj = calculate_majority_sign_mask(pruned, method="total")
        ref = disjoint_merge(pruned * wk.float()[:, None], maj).double()
        yt = tt[key].double().flatten()
        worst_ties = max(worst_ties, ((yt - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item())
    frac, sd = kept / total, math.sqrt(density * (1 - density) / total)
    ok = worst_lin < 1e-6 and abs(frac - density) < 5 * sd and worst_ties < 1e-5
    print(f"dare_linear: every element one of the 2^3 mask sums (worst {worst_lin:.2g}); kept {frac:.4f} of {total} "
          f"(density {density}, 5 sigma {5 * sd:.4f}); dare_ties vs PEFT's election on those masks: {worst_ties:.2g}")
    return 0 if ok else 1

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "gen": gen(sys.argv[2], sys.argv[3])
    elif mode == "compare": sys.exit(compare(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif mode == "dare": sys.exit(dare(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])))
    elif mode == "cases":
        for k, (names, w, comb, dens, rank, maj) in CASES.items():
            print(k, names, ",".join(str(x) for x in w), comb, dens if dens is not None else "-", rank or "-", maj)
