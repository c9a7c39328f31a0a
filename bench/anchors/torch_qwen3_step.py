# Anchor script, copied verbatim below this comment from the project's shared/anchors/torch_qwen3_step.py
# (../shared does not travel to the device machine); do not edit: its figures are the reference.
"""Anchor measurement: training-step throughput of the PyTorch stack the reference
Bagpiper implementation trains on (HF transformers Qwen3 + SDPA attention + AdamW,
bf16 autocast, activation checkpointing), at Qwen3-8B layer width with fewer layers.

Prints tokens/s and model-FLOPs utilisation (MFU) against a given peak.
Usage: python torch_qwen3_step.py --layers 8 --seq 4096 --batch 1 --peak 989e12
"""
import argparse, time, json
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=8)
p.add_argument("--hidden", type=int, default=4096)
p.add_argument("--inter", type=int, default=12288)
p.add_argument("--heads", type=int, default=32)
p.add_argument("--kv", type=int, default=8)
p.add_argument("--vocab", type=int, default=160392)  # 256 special + 151936 text + 8*1025 codec
p.add_argument("--seq", type=int, default=4096)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--steps", type=int, default=8)
p.add_argument("--remat", type=int, default=1)
p.add_argument("--peak", type=float, default=989e12)
p.add_argument("--device", default="cuda")
a = p.parse_args()

cfg = Qwen3Config(hidden_size=a.hidden, intermediate_size=a.inter, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.kv, head_dim=a.hidden // a.heads,
                  vocab_size=a.vocab, max_position_embeddings=max(a.seq, 32), tie_word_embeddings=False)
cfg._attn_implementation = "sdpa"
torch.manual_seed(0)
model = Qwen3ForCausalLM(cfg).to(a.device)
if a.remat:
    model.gradient_checkpointing_enable()
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=3e-7,
                        fused=(a.device == "cuda"))
n_params = sum(p.numel() for p in model.parameters())
n_embed = model.model.embed_tokens.weight.numel()
ids = torch.randint(0, a.vocab, (a.batch, a.seq), device=a.device)

def step():
    with torch.autocast(a.device, dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    return out.loss

for _ in range(2):
    step()
if a.device == "cuda":
    torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(a.steps):
    loss = step()
if a.device == "cuda":
    torch.cuda.synchronize()
dt = (time.perf_counter() - t) / a.steps
tokens = a.batch * a.seq
# 6*N (matmul params, embedding lookup excluded) + attention 12*L*d*S (no causal halving)
flops_per_token = 6 * (n_params - n_embed) + 12 * a.layers * a.hidden * a.seq
mfu = flops_per_token * tokens / dt / a.peak
print(json.dumps({"what": "torch-hf-qwen3", "layers": a.layers, "seq": a.seq, "batch": a.batch,
                  "remat": a.remat, "params": n_params, "step_s": round(dt, 4),
                  "tokens_per_s": round(tokens / dt, 1), "mfu": round(mfu, 4),
                  "loss": float(loss),
                  "max_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if a.device == "cuda" else None}))
