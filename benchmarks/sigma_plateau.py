"""The σ-GPT plateau sweep (docs/study.md, "σ-GPT's plateau"): tiny any-order runs on the CPU with
the trainer's pieces (BatchSource, SlotLoss, learning_rate, AdamW groups) and one change each to
sigma_gpt's initialisation or its tables' weight decay; writes the mean training bits of every 25
steps to --out (JSON lines).

    head -c 300000 ../shared/data/tinyshakespeare.txt > /tmp/ts300k.txt
    PYTHONPATH=. python benchmarks/sigma_plateau.py --data /tmp/ts300k.txt --out /tmp/r.jsonl [--variant decoupled_rope] [options]

Every row of the table runs on the model code as it is (σ-GPT's own init: one sinusoid x 0.02 in
both tables); the options change the init here, in the script. The "planted heads" rows are
`--init halves --oracle shift --oc 2` (seed 0 / 1: run names oshift_c2 / oshift_c2_s1), which
docs/study.md explains and did not adopt.
benchmarks/results/sigma-plateau.jsonl holds the curves of the table (one line per run and step).
Run names -> rows: rope, two: the baselines; base, base_s1: old init; small005/small01/scale05/
scale1x/unit: tables x0.25/x0.5/x2.5/x5/x50; random; nowd; frozen; halves; ortho; target_only;
base128/centered; tied_l0_s4: W_K = W_Q x4; oracle_halves: symmetric heads; oshift_c2 (= fixed),
oshift_c2_s1 (= fixed_s1), oshift_c15, oshift_c3: the new init and its gains. Others (tied_all,
tied_l0, tied_all_s4, oracle_full, oh_c3, oh_c3_l2, halves_random, base128_tied4) are variations
not in the table.
"""
import argparse
import json
import math
import sys
import time

import torch
torch.set_num_threads(1)
from workbench.data import load_corpus, make_tokenizer, train_val_split
from workbench.models import from_config
from workbench.models.single_stream import sinusoidal_table
from workbench.training.settings import TrainSettings
from workbench.training.step import BatchSource, SlotLoss
from workbench.training.trainer import learning_rate

p = argparse.ArgumentParser()
p.add_argument("--variant", default="sigma_gpt")
p.add_argument("--init", default="default")  # default|scaled|random|halves|halves_unit|target_only|...
p.add_argument("--scale", type=float, default=None)
p.add_argument("--table_wd", type=float, default=None)
p.add_argument("--steps", type=int, default=None)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--seq", type=int, default=128)
p.add_argument("--tps", type=int, default=4096)
p.add_argument("--dm", type=int, default=64)
p.add_argument("--out", required=True)
p.add_argument("--data", required=True)
p.add_argument("--tied_qk", default="")  # "", "all", "l0"
p.add_argument("--qk_scale", type=float, default=1.0)
p.add_argument("--freeze", action="store_true")
p.add_argument("--base", type=float, default=10000.0)
p.add_argument("--center", action="store_true")
p.add_argument("--oracle", default="")  # full|halves
p.add_argument("--oc", type=float, default=1.5)
p.add_argument("--olayers", type=int, default=1)
a = p.parse_args()
s = TrainSettings(variant=a.variant, n_layers=2, d_model=a.dm, n_heads=4, d_head=a.dm // 4, d_mlp=4 * a.dm,
                  data=a.data, seq_len=a.seq, tokens_per_step=a.tps, train_tokens=2_400_000,
                  warmup_tokens=50_000, seed=a.seed)
corpus = load_corpus(s.data)
tok = make_tokenizer(s.tokenizer, corpus.text)
split = train_val_split(tok.encode_tensor(corpus.text), s.seq_len, s.val_fraction)
torch.manual_seed(a.seed)
model = from_config(s.model_config(tok.vocab_size))
cfg = model.cfg
d, n = cfg.d_model, cfg.n_ctx
if a.variant == "sigma_gpt":
    g = torch.Generator().manual_seed(1000 + a.seed)
    with torch.no_grad():
        sc = a.scale if a.scale is not None else cfg.init_range
        if a.init == "default":
            pass
        elif a.init == "scaled":  # same sinusoid, other scale
            t = sinusoidal_table(n, d) * sc; model.W_pos.copy_(t); model.W_target.copy_(t)
        elif a.init == "random":
            model.W_pos.copy_(torch.randn(n, d, generator=g) * sc); model.W_target.copy_(torch.randn(n, d, generator=g) * sc)
        elif a.init == "halves":  # own pos in first half of dims, target in second half (σ-GPT reference: concatenation)
            h = sinusoidal_table(n, d // 2) * sc
            model.W_pos.zero_(); model.W_target.zero_()
            model.W_pos[:, : d // 2] = h; model.W_target[:, d // 2 :] = h
        elif a.init == "halves_random":
            model.W_pos.zero_(); model.W_target.zero_()
            model.W_pos[:, : d // 2] = torch.randn(n, d // 2, generator=g) * sc
            model.W_target[:, d // 2 :] = torch.randn(n, d // 2, generator=g) * sc
        elif a.init == "ortho":  # full-width sinusoid for pos, target = random orthogonal rotation of it
            t = sinusoidal_table(n, d) * sc
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
            model.W_pos.copy_(t); model.W_target.copy_(t @ q)
        elif a.init == "target_only":  # own-position table zero at init
            t = sinusoidal_table(n, d) * sc; model.W_pos.zero_(); model.W_target.copy_(t)
        elif a.init == "pos_random_target_sin":
            model.W_pos.copy_(torch.randn(n, d, generator=g) * sc); model.W_target.copy_(sinusoidal_table(n, d) * sc)
        elif a.init == "sinbase":
            pos = torch.arange(n, dtype=torch.float64)[:, None]
            freqs = a.base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
            t = torch.zeros(n, d, dtype=torch.float64); t[:, 0::2] = (pos * freqs).sin(); t[:, 1::2] = (pos * freqs).cos()
            if a.center: t = t - t.mean(0)
            t = (t / t.pow(2).mean().sqrt() * sc).float()
            model.W_pos.copy_(t); model.W_target.copy_(t)
        else:
            raise SystemExit(f"unknown init {a.init}")
if a.tied_qk:
    with torch.no_grad():
        for li, blk in enumerate(model.blocks):
            if a.tied_qk == "l0" and li > 0: continue
            blk.attn.W_Q.mul_(a.qk_scale); blk.attn.W_K.copy_(blk.attn.W_Q)
if a.freeze:
    model.W_pos.requires_grad_(False); model.W_target.requires_grad_(False)
if a.oracle:
    # layer-0 heads read bands of sinusoid dims: query target code -> key own code, identity within band
    with torch.no_grad():
        H, dh = cfg.n_heads, cfg.d_head
        for li in range(a.olayers):
            attn = model.blocks[li].attn
            if a.oracle == "full":
                band = d // H
                for h in range(H):
                    for k in range(min(band, dh)):
                        attn.W_Q[h, :, k] = 0; attn.W_K[h, :, k] = 0
                        attn.W_Q[h, h * band + k, k] = a.oc; attn.W_K[h, h * band + k, k] = a.oc
            elif a.oracle == "shift":  # halves layout; head h: band h%2 of 8 freq pairs, offset -1 (h<2) or +1
                half = d // 2; npair = dh // 2
                for h in range(H):
                    shift = 1 if h < H // 2 else -1
                    band = h % 2
                    attn.W_Q[h, :, :] *= 0.0; attn.W_K[h, :, :] *= 0.0
                    for k in range(npair):
                        i = band * npair + k
                        f = 10000.0 ** (-2 * i / half)
                        cs, sn = math.cos(shift * f), math.sin(shift * f)
                        M = [[cs, -sn], [sn, cs]]
                        for aa in range(2):
                            for bb in range(2):
                                attn.W_Q[h, half + 2 * i + aa, 2 * k + bb] = a.oc * M[bb][aa]
                            attn.W_K[h, 2 * i + aa, 2 * k + aa] = a.oc
            elif a.oracle == "halves":
                half = d // 2; band = half // H
                for h in range(H):
                    for k in range(min(band, dh)):
                        attn.W_Q[h, :, k] = 0; attn.W_K[h, :, k] = 0
                        attn.W_Q[h, half + h * band + k, k] = a.oc; attn.W_K[h, h * band + k, k] = a.oc
tables = {id(p) for n_, p in model.named_parameters() if n_ in ("W_pos", "W_target")}
decay = [p for n_, p in model.named_parameters() if p.ndim >= 2 and id(p) not in tables]
no_decay = [p for n_, p in model.named_parameters() if p.ndim < 2]
tab = [p for n_, p in model.named_parameters() if id(p) in tables and p.requires_grad]
groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
if tab:
    groups.append({"params": tab, "weight_decay": s.weight_decay if a.table_wd is None else a.table_wd})
opt = torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, s.beta2))
batches = BatchSource(s, split.train, tok.vocab_size, "cpu")
loss_mod = SlotLoss(model)
steps = a.steps or s.steps
f = open(a.out, "w")
t0 = time.time(); acc = []
for step in range(steps):
    tokens, order = batches(step)
    lr = learning_rate(s, step * s.tokens_per_step)
    for gr in opt.param_groups: gr["lr"] = lr
    loss = loss_mod(tokens, order)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    opt.step(); opt.zero_grad(set_to_none=True)
    acc.append(loss.item() / math.log(2))
    if (step + 1) % 25 == 0:
        rec = {"step": step + 1, "bits": sum(acc) / len(acc), "t": round(time.time() - t0, 1)}
        if model.cfg.variant == "sigma_gpt":
            rec["pos_rms"] = model.W_pos.pow(2).mean().sqrt().item(); rec["tgt_rms"] = model.W_target.pow(2).mean().sqrt().item()
            rec["E_rms"] = model.W_E.pow(2).mean().sqrt().item()
        f.write(json.dumps(rec) + "\n"); f.flush(); acc = []
print("done", time.time() - t0)
