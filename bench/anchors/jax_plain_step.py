# Anchor script, copied verbatim below this comment from the project's shared/anchors/jax_plain_step.py
# (../shared does not travel to the device machine); do not edit: its figures are the reference.
"""Anchor: a plain-JAX Qwen3-width training step (no Flax), to calibrate what JAX reaches
on one GPU for the same shape as torch_qwen3_step.py. Scan over layers, remat
(dots saveable), bf16 compute with fp32 params, cuDNN attention, optax AdamW.
Usage: python jax_plain_step.py --layers 8 --seq 4096 --batch 1 --peak 989e12
"""
import argparse, json, time
import jax, jax.numpy as jnp, optax

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=8); p.add_argument("--hidden", type=int, default=4096)
p.add_argument("--inter", type=int, default=12288); p.add_argument("--heads", type=int, default=32)
p.add_argument("--kv", type=int, default=8); p.add_argument("--vocab", type=int, default=160392)
p.add_argument("--seq", type=int, default=4096); p.add_argument("--batch", type=int, default=1)
p.add_argument("--steps", type=int, default=8); p.add_argument("--remat", default="dots")
p.add_argument("--attn", default="cudnn"); p.add_argument("--peak", type=float, default=989e12)
a = p.parse_args()
D, F, H, K, V, L = a.hidden, a.inter, a.heads, a.kv, a.vocab, a.layers
hd = D // H

def init(key):
    ks = jax.random.split(key, 9)
    n = lambda k, s: jax.random.normal(k, s, jnp.float32) * 0.02
    layer = dict(q=n(ks[0], (L, D, H * hd)), k=n(ks[1], (L, D, K * hd)), v=n(ks[2], (L, D, K * hd)),
                 o=n(ks[3], (L, H * hd, D)), g=n(ks[4], (L, D, F)), u=n(ks[5], (L, D, F)), d=n(ks[6], (L, F, D)),
                 n1=jnp.ones((L, D)), n2=jnp.ones((L, D)), qn=jnp.ones((L, hd)), kn=jnp.ones((L, hd)))
    return dict(emb=n(ks[7], (V, D)), head=n(ks[8], (D, V)), norm=jnp.ones((D,)), layers=layer)

def rms(x, w, eps=1e-6):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps) * w).astype(x.dtype)

def rope(x, pos, theta=1e6):
    half = x.shape[-1] // 2
    freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
    ang = pos[..., None].astype(jnp.float32) * freq
    cos, sin = jnp.cos(ang)[:, :, None, :], jnp.sin(ang)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)

def block(x, lp, pos):
    B, T, _ = x.shape
    c = lambda w: w.astype(jnp.bfloat16)
    h = rms(x, lp["n1"])
    q = (h @ c(lp["q"])).reshape(B, T, H, hd); k = (h @ c(lp["k"])).reshape(B, T, K, hd)
    v = (h @ c(lp["v"])).reshape(B, T, K, hd)
    q, k = rope(rms(q, lp["qn"]), pos), rope(rms(k, lp["kn"]), pos)
    o = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=None if a.attn == "xla" else a.attn)
    x = x + o.reshape(B, T, H * hd) @ c(lp["o"])
    h = rms(x, lp["n2"])
    x = x + (jax.nn.silu(h @ c(lp["g"])) * (h @ c(lp["u"]))) @ c(lp["d"])
    return x

policy = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
          "none": None, "full": jax.checkpoint_policies.nothing_saveable}[a.remat]

def loss_fn(params, ids):
    pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    x = params["emb"].astype(jnp.bfloat16)[ids]
    body = lambda x, lp: (block(x, lp, pos), None)
    if policy is not None or a.remat == "full":
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    x, _ = jax.lax.scan(body, x, params["layers"])
    x = rms(x, params["norm"])
    logits = (x @ params["head"].astype(jnp.bfloat16)).astype(jnp.float32)
    tgt = ids[:, 1:]
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tgt).mean()

tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=3e-7))
params = jax.jit(init)(jax.random.PRNGKey(0))
opt = jax.jit(tx.init)(params)

@jax.jit
def step(params, opt, ids):
    loss, g = jax.value_and_grad(loss_fn)(params, ids)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

ids = jax.random.randint(jax.random.PRNGKey(1), (a.batch, a.seq), 0, V)
t0 = time.perf_counter(); params, opt, loss = step(params, opt, ids); loss.block_until_ready()
compile_s = time.perf_counter() - t0
params, opt, loss = step(params, opt, ids); loss.block_until_ready()
t = time.perf_counter()
for _ in range(a.steps):
    params, opt, loss = step(params, opt, ids)
loss.block_until_ready()
dt = (time.perf_counter() - t) / a.steps
n_params = sum(x.size for x in jax.tree.leaves(params))
n_emb = V * D
tokens = a.batch * a.seq
fpt = 6 * (n_params - n_emb) + 12 * L * D * a.seq
print(json.dumps({"what": "jax-plain-qwen3", "attn": a.attn, "remat": a.remat, "layers": L, "seq": a.seq,
                  "batch": a.batch, "params": int(n_params), "compile_s": round(compile_s, 1),
                  "step_s": round(dt, 4), "tokens_per_s": round(tokens / dt, 1),
                  "mfu": round(fpt * tokens / dt / a.peak, 4), "loss": float(loss),
                  "device": str(jax.devices()[0].device_kind)}))
