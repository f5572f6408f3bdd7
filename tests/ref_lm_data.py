#!/usr/bin/env python3
"""Oracle of src/train/lm_data.c (tests/check_lm_data.sh).

  gen DATA OUT            writes the test's data files from ../shared/data
                          (GSM8K, Alpaca, SAMSum, XSum) and bad-input files
  expect TOKDIR CASES OUTDIR
                          per case (FILE FORMAT MAX_LEN PACK LOSS_ALL [TEMPLATE [RESP]]) the rows peftc must produce, one JSON line each, and
                          the summary line, computed with Hugging Face's
                          tokenizer (tokenizers via transformers) and
                          transformers' apply_chat_template.

The contract (lm_data.h): each piece (prompt, response, chat span) tokenised
alone (special tokens in the text parsed, as HF does by default), the
tokenizer's default BOS in front (not for chat: templates write it), EOS after
the response of non-chat formats; targets on the response (+EOS), or on the
assistant spans of the rendered chat (from the end of the generation prompt to
the end of the turn), or everywhere with LOSS_ALL; the first token never a
target; truncation to MAX_LEN keeping the head, dropped if no target is left;
packing first-fit in file order, segments numbered within a row."""
import json, os, sys

ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
                "### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def jl(path, n):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
            if len(out) >= n:
                break
    return out


def write_jsonl(path, recs):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def gen(data, out):
    os.makedirs(out, exist_ok=True)
    gsm = jl(os.path.join(data, "gsm8k/train.jsonl"), 40)
    write_jsonl(os.path.join(out, "pr.jsonl"), [{"prompt": "Question: " + g["question"] + "\nAnswer: ",
                                                "response": g["answer"]} for g in gsm])
    write_jsonl(os.path.join(out, "gsm_raw.jsonl"), gsm)
    alp = json.load(open(os.path.join(data, "alpaca-5k/alpaca_data.json"), encoding="utf-8"))
    # with and without input; unicode and long outputs among them
    json.dump(alp[:60], open(os.path.join(out, "alpaca.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)
    sam = jl(os.path.join(data, "samsum/test.jsonl"), 30)
    chats = []
    for i, s in enumerate(sam):
        m = [{"role": "user", "content": "Summarize this dialogue:\n" + s["context"]},
             {"role": "assistant", "content": s["response"]}]
        if i % 3 == 1:
            m = [{"role": "system", "content": "You write short summaries."}] + m
        if i % 3 == 2:   # a multi-turn conversation: two assistant spans
            m += [{"role": "user", "content": "Shorter, please."},
                  {"role": "assistant", "content": s["response"].split(".")[0] + "."}]
        chats.append({"messages": m})
    write_jsonl(os.path.join(out, "chat.jsonl"), chats)
    xs = jl(os.path.join(data, "xsum-test1000/test.jsonl"), 30)
    write_jsonl(os.path.join(out, "text.jsonl"), [{"text": x["summary"]} for x in xs])
    write_jsonl(os.path.join(out, "xsum.jsonl"), xs)
    # long records (0.1-1 MB): peftc tokenises a prefix of a text whose head
    # is all truncation keeps (lm_data.c, seq_piece); HF tokenises it whole.
    # Prose with newlines, digits and punctuation, a run of 40k CJK
    # characters without a space (no cut point: tokenised whole), numbers.
    xl = jl(os.path.join(data, "xsum-test1000/test.jsonl"), 1000)
    docs = [x["document"] for x in xl]
    longs = [{"document": "\n".join(docs[:300]), "summary": xl[0]["summary"]},
             {"document": "\u65e5\u672c\u8a9e\u306e\u6587" * 8000 + " " + " ".join(docs[300:400]), "summary": xl[1]["summary"]},
             {"document": " ".join(str(i * 7919) for i in range(30000)) + ", done.", "summary": xl[2]["summary"]},
             {"document": xl[3]["document"], "summary": xl[3]["summary"]},
             {"document": "Caf\u00e9 na\u00efve r\u00e9sum\u00e9! " * 20000, "summary": xl[4]["summary"]}]
    write_jsonl(os.path.join(out, "long.jsonl"), longs)
    write_jsonl(os.path.join(out, "chat_long.jsonl"),
                [{"messages": [{"role": "user", "content": "Summarize:\n" + r["document"]},
                               {"role": "assistant", "content": r["summary"]}]} for r in longs])
    # bad inputs
    write_jsonl(os.path.join(out, "bad_missing.jsonl"), [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    write_jsonl(os.path.join(out, "bad_empty.jsonl"), [{"prompt": "a", "response": ""}])
    write_jsonl(os.path.join(out, "bad_unknown.jsonl"), [{"question": "a", "label": 1}])
    write_jsonl(os.path.join(out, "bad_chat.jsonl"), [{"messages": [{"role": "user"}]}])
    with open(os.path.join(out, "bad_json.jsonl"), "w") as f:
        f.write('{"text": "fine"}\n{"text": "broken\n')


def tokenizer(d):
    from transformers import PreTrainedTokenizerFast
    conf = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"),
                                  bos_token=conf.get("bos_token"), eos_token=conf.get("eos_token"))
    tok.chat_template = conf.get("chat_template")
    return tok


def records(path):
    with open(path, encoding="utf-8") as f:
        s = f.read()
    if s.lstrip().startswith("["):
        return json.loads(s)
    return [json.loads(l) for l in s.split("\n") if l.strip()]


def expect(tokdir, path, fmt, max_len, pack, loss_all, template=None, resp_field=None):
    tok = tokenizer(tokdir)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"] if s else []
    d = tok("", add_special_tokens=True)["input_ids"]
    bos = d[0] if d and d[0] == tok.bos_token_id else None
    eos = tok.eos_token_id
    recs = records(path)
    if fmt == "auto":
        r0 = recs[0]
        fmt = ("template" if template else "chat" if "messages" in r0 else
               "alpaca" if "instruction" in r0 and "output" in r0 else
               "prompt-response" if "prompt" in r0 and "response" in r0 else "text")
    exs = []
    truncated = dropped = 0
    for r in recs:
        ids, tg = [], []
        def piece(s, t):
            e = enc(s)
            ids.extend(e)
            tg.extend([t] * len(e))
        if fmt != "chat" and bos is not None:
            ids.append(bos); tg.append(0)
        if fmt == "chat":
            m = r["messages"]
            full = tok.apply_chat_template(m, tokenize=False)
            done = 0
            for i, x in enumerate(m):
                if x["role"] != "assistant":
                    continue
                pre = tok.apply_chat_template(m[:i], tokenize=False, add_generation_prompt=True)
                upto = tok.apply_chat_template(m[:i + 1], tokenize=False)
                assert full.startswith(pre) and full.startswith(upto)
                piece(full[done:len(pre)], loss_all)
                piece(full[len(pre):len(upto)], 1)
                done = len(upto)
            piece(full[done:], loss_all)
        else:
            if fmt == "text":
                prompt, resp, la = r["text"], None, 1
            elif fmt == "alpaca":
                t = ALPACA_INPUT if r.get("input") else ALPACA_NO_INPUT
                prompt, resp, la = t.format(instruction=r["instruction"], input=r.get("input", "")), r["output"], loss_all
            elif fmt == "template":
                prompt, resp, la = template.format(**r), r[resp_field or "response"], loss_all
            else:
                prompt, resp, la = r["prompt"], r["response"], loss_all
            piece(prompt, la)
            if resp is not None:
                piece(resp, 1)
            if eos is not None:
                ids.append(eos); tg.append(1)
        if tg:
            tg[0] = 0
        if len(ids) > max_len:
            ids, tg = ids[:max_len], tg[:max_len]
            truncated += 1
        if not any(tg[1:]):
            dropped += 1
            continue
        exs.append((ids, tg))
    rows = []
    for ids, tg in exs:
        if pack and rows and len(rows[-1][0]) + len(ids) <= max_len:
            row = rows[-1]
            s = row[2][-1] + 1
        else:
            row = ([], [], [])
            rows.append(row)
            s = 0
        row[0].extend(ids); row[1].extend(tg); row[2].extend([s] * len(ids))
    for a, b, c in rows:
        print(json.dumps({"ids": a, "target": b, "seg": c}))
    print(json.dumps({"examples": len(exs), "truncated": truncated, "dropped": dropped, "format": fmt}))


def main():
    if sys.argv[1] == "gen":
        gen(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "expect":
        # expect TOKDIR CASES OUTDIR: CASES has one case per line, its
        # fields tab-separated: FILE FORMAT MAX_LEN PACK LOSS_ALL [TEMPLATE [RESP]]
        # (TEMPLATE with \n escapes); writes OUTDIR/<line number>.want
        tokdir, cases, outdir = sys.argv[2:5]
        for i, line in enumerate(open(cases, encoding="utf-8")):
            a = line.rstrip("\n").split("\t")
            tmpl = a[5].replace("\\n", "\n") if len(a) > 5 and a[5] else None
            with open(os.path.join(outdir, "%d.want" % (i + 1)), "w", encoding="utf-8") as f:
                so, sys.stdout = sys.stdout, f
                try:
                    expect(tokdir, a[0], a[1], int(a[2]), int(a[3]), int(a[4]), tmpl, a[6] if len(a) > 6 else None)
                finally:
                    sys.stdout = so


if __name__ == "__main__":
    main()
