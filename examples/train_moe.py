"""Train a small MoE transformer language model in FP8 and, from the same initialization, in bf16.

    python examples/train_moe.py                     # on a Hopper GPU: 4 layers, hidden 1024, 16 experts top-2,
                                                     # sequence 1024, batch 8, 500 steps, both runs
    python examples/train_moe.py --steps 100 --layers 2 --experts 8 --out /tmp/curves
    python examples/train_moe.py --tiny              # the CPU configuration, on any machine
    python examples/train_moe.py --seeds 3           # both runs for seeds 0, 1, 2: the loss gap's mean and spread

A byte-level language model (vocabulary 256) learns the text bundled with this repository (README, docs, the
Python and CUDA sources: nothing is downloaded; the last 5% is held out). Each block is pre-norm attention
(``nn.Fp8Dense`` projections, bf16 causal attention with rotary embeddings) and a pre-norm ``nn.MoE`` (top-k
router in float32, SwiGLU experts); embeddings and the tied output projection stay in float32. Parameters are
float32 (AdamW master weights), activations bfloat16. The FP8 run computes every projection and expert GEMM
(forward, dgrad, wgrad) with jax_dgpt (``trainable=True``: ``fp8_matmul``, ``fp8_ragged_dot``); the reference
run is the same model with ``use_fp8=False`` (XLA bf16 dots and ``jax.lax.ragged_dot``), from the same initial
parameters and the same batches. It prints both loss curves, the step time and tokens/s of each, the final and
held-out losses, and saves the curves (PNG, with matplotlib) and a JSON record.

Without a Hopper GPU it runs a tiny configuration on the CPU (jax_dgpt's CPU reference of the FP8 GEMMs, so the
numbers are the same kind of FP8 arithmetic, only slow) and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jax_dgpt
from jax_dgpt import nn as dgnn
from jax_dgpt.testing import hopper_gpu_visible

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS_GLOBS = ("README.md", "docs/*.md", "jax_dgpt/**/*.py", "tests/*.py", "kernels/*.cuh", "examples/*.py")


@dataclasses.dataclass(frozen=True)
class Config:
    layers: int = 4
    hidden: int = 1024
    heads: int = 8
    experts: int = 16
    top_k: int = 2
    expert_hidden: int = 1024
    seq: int = 1024
    batch: int = 8
    steps: int = 500
    lr: float = 3e-4
    warmup: int = 50
    aux_weight: float = 0.01  # load-balancing loss (Switch Transformer form)
    seed: int = 0
    recipe: str = "rowwise"
    grad_dtype: str = "e5m2"


GPU = Config()
TINY = Config(
    layers=2, hidden=64, heads=4, experts=4, top_k=2, expert_hidden=64, seq=64, batch=4, steps=40, lr=3e-3, warmup=5
)


# --- data -------------------------------------------------------------------------------------------
def corpus() -> tuple[np.ndarray, np.ndarray]:
    """uint8 (train, held-out) bytes of the repository's own text, in a fixed order (the last 5% held out)."""
    files = sorted({path for pattern in CORPUS_GLOBS for path in ROOT.glob(pattern) if path.is_file()})
    data = np.frombuffer(b"\n".join(path.read_bytes() for path in files), np.uint8)
    if data.size < 100_000:
        raise RuntimeError(f"train_moe: found only {data.size} bytes of text under {ROOT}; run from a checkout")
    split = int(data.size * 0.95)
    return data[:split], data[split:]


def batches(data: np.ndarray, config: Config, seed: int):
    """Endless random crops ``[batch, seq + 1]`` (int32), the same sequence for the same seed."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, data.size - config.seq - 1, size=config.batch)
        yield np.stack([data[s : s + config.seq + 1] for s in starts]).astype(np.int32)


# --- the model --------------------------------------------------------------------------------------
def rotary(x: jax.Array) -> jax.Array:
    """Rotary position embedding of ``[B, S, heads, D]`` (pairs (i, i + D/2) rotated by position)."""
    seq, dim = x.shape[1], x.shape[-1]
    freq = 10000.0 ** (-jnp.arange(0, dim // 2, dtype=jnp.float32) / (dim // 2))
    angle = jnp.arange(seq, dtype=jnp.float32)[:, None] * freq[None, :]
    cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([first * cos - second * sin, first * sin + second * cos], -1).astype(x.dtype)


class Block(nnx.Module):
    def __init__(self, config: Config, use_fp8: bool, recipe: jax_dgpt.Fp8Recipe, rngs: nnx.Rngs):
        h = config.hidden
        dense = dict(use_bias=False, trainable=True, use_fp8=use_fp8, rngs=rngs)
        dense["recipe"] = recipe if use_fp8 else None
        self.heads = config.heads
        self.attn_norm, self.moe_norm = nnx.RMSNorm(h, rngs=rngs), nnx.RMSNorm(h, rngs=rngs)
        self.qkv = dgnn.Fp8Dense(h, 3 * h, **dense)
        self.out = dgnn.Fp8Dense(h, h, **dense)
        self.moe = dgnn.MoE(
            h,
            config.expert_hidden,
            config.experts,
            config.top_k,
            trainable=True,
            use_fp8=use_fp8,
            recipe=dense["recipe"],
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, s, h = x.shape
        q, k, v = jnp.split(self.qkv(self.attn_norm(x).astype(x.dtype)), 3, axis=-1)
        q, k, v = (t.reshape(b, s, self.heads, h // self.heads) for t in (q, k, v))
        attended = jax.nn.dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
        x = x + self.out(attended.reshape(b, s, h))
        normed = self.moe_norm(x).astype(x.dtype)
        return x + self.moe(normed), balance_loss(self.moe, normed.reshape(-1, h))


def balance_loss(moe: dgnn.MoE, tokens: jax.Array) -> jax.Array:
    """Switch-Transformer load balancing: ``E * sum_e f_e * p_e`` (f: share of assignments, p: mean router
    probability of expert e); 1 when balanced. The router runs again here (a [T, H] x [H, E] dot)."""
    logits = tokens.astype(jnp.float32) @ moe.router_kernel[...] + moe.router_bias[...]
    probs = jax.nn.softmax(logits, axis=-1)
    _, ids = jax.lax.top_k(probs, moe.top_k)
    share = jnp.mean(jax.nn.one_hot(ids, moe.num_experts).sum(1), axis=0) / moe.top_k
    return moe.num_experts * jnp.sum(jax.lax.stop_gradient(share) * jnp.mean(probs, axis=0))


class LanguageModel(nnx.Module):
    def __init__(self, config: Config, use_fp8: bool, rngs: nnx.Rngs):
        recipe = jax_dgpt.Fp8Recipe(
            scaling=config.recipe, grad_dtype={"e5m2": jnp.float8_e5m2, "e4m3": jnp.float8_e4m3fn}[config.grad_dtype]
        )
        self.embed = nnx.Embed(256, config.hidden, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.blocks = nnx.List([Block(config, use_fp8, recipe, rngs) for _ in range(config.layers)])
        self.norm = nnx.RMSNorm(config.hidden, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """int32 ``[B, S]`` -> (float32 logits ``[B, S, 256]``, mean balance loss)."""
        x = self.embed(tokens).astype(jnp.bfloat16)
        aux = []
        for block in self.blocks:
            x, balance = block(x)
            aux.append(balance)
        h = self.norm(x.astype(jnp.float32))
        return h @ self.embed.embedding[...].T, jnp.mean(jnp.stack(aux))


def loss_fn(model: LanguageModel, batch: jax.Array, aux_weight: float) -> tuple[jax.Array, jax.Array]:
    logits, balance = model(batch[:, :-1])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()
    return loss + aux_weight * balance, loss


# --- training ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    name: str
    losses: list[float]
    step_seconds: list[float]  # wall time of each step after the first (which compiles)
    compile_seconds: float
    eval_loss: float
    init_fingerprint: float  # sum of |initial parameters|: equal for both runs (the same initialization)


def optimizer(config: Config) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.lr, config.warmup, max(config.steps, config.warmup + 1))
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.95, weight_decay=0.1))


def train(config: Config, use_fp8: bool, log=print, log_every: int = 10) -> Run:
    """Trains the model for ``config.steps`` steps (seeded: the same init and batches for both runs)."""
    name = "fp8" if use_fp8 else "bf16"
    model = LanguageModel(config, use_fp8, nnx.Rngs(config.seed))
    graphdef, params = nnx.split(model)
    fingerprint = float(sum(np.abs(np.asarray(p, np.float64)).sum() for p in jax.tree.leaves(params)))
    tx = optimizer(config)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def objective(params):
            return loss_fn(nnx.merge(graphdef, params), batch, config.aux_weight)

        (_, loss), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    evaluate = jax.jit(lambda params, batch: loss_fn(nnx.merge(graphdef, params), batch, 0.0)[1])
    train_data, held_out = corpus()
    data = batches(train_data, config, config.seed)
    losses, times, compile_s = [], [], 0.0
    for i in range(config.steps):
        batch = jnp.asarray(next(data))
        started = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))  # waits for the step
        elapsed = time.perf_counter() - started
        if i == 0:
            compile_s = elapsed  # the first step compiles
        else:
            times.append(elapsed)
        if log and (i % log_every == 0 or i == config.steps - 1):
            log(f"  {name} step {i:4d}  loss {losses[-1]:.4f}")
    evals = batches(held_out, config, config.seed + 1)
    eval_loss = float(np.mean([float(evaluate(params, jnp.asarray(next(evals)))) for _ in range(4)]))
    return Run(name, losses, times, compile_s, eval_loss, fingerprint)


def tail_mean(values: list[float], count: int = 10) -> float:
    return float(np.mean(values[-count:]))


def summary(config: Config, runs: list[Run]) -> dict:
    tokens = config.batch * config.seq
    out = {"config": dataclasses.asdict(config), "device": str(jax.devices()[0]), "runs": {}}
    for run in runs:
        step_s = statistics.median(run.step_seconds) if run.step_seconds else float("nan")
        out["runs"][run.name] = dict(
            losses=run.losses,
            step_ms=1e3 * step_s,
            tokens_per_s=tokens / step_s,
            compile_s=run.compile_seconds,
            final_loss=tail_mean(run.losses),
            eval_loss=run.eval_loss,
        )
    if len(runs) == 2:
        fp8, bf16 = out["runs"]["fp8"], out["runs"]["bf16"]
        out["final_loss_rel_diff"] = (fp8["final_loss"] - bf16["final_loss"]) / bf16["final_loss"]
        out["eval_loss_rel_diff"] = (fp8["eval_loss"] - bf16["eval_loss"]) / bf16["eval_loss"]
        out["speedup"] = bf16["step_ms"] / fp8["step_ms"]
    return out


def report(result: dict) -> None:
    for name, run in result["runs"].items():
        print(
            f"{name:>5}: {run['step_ms']:9.2f} ms/step  {run['tokens_per_s']:12.0f} tokens/s  compile "
            f"{run['compile_s']:.1f} s  final loss {run['final_loss']:.4f}  held-out loss {run['eval_loss']:.4f}"
        )
    if "speedup" in result:
        print(
            f"fp8 vs bf16: speedup {result['speedup']:.2f}x, final loss {100 * result['final_loss_rel_diff']:+.2f}%, "
            f"held-out loss {100 * result['eval_loss_rel_diff']:+.2f}%"
        )


def across_seeds(results: list[dict]) -> dict:
    """The first seed's record (curves, plot) plus every seed's summary and, with the bf16 reference, the
    mean and sample standard deviation over seeds of the relative loss gaps: what a 1% target is judged on."""

    def without_curves(result: dict) -> dict:
        record = {k: v for k, v in result.items() if k not in ("config", "device", "runs")}  # the gaps
        runs = {name: {k: v for k, v in run.items() if k != "losses"} for name, run in result["runs"].items()}
        return {"seed": result["config"]["seed"], **runs, **record}

    combined = dict(results[0])
    combined["seeds"] = [without_curves(r) for r in results]
    if "speedup" in results[0]:
        for key in ("final_loss_rel_diff", "eval_loss_rel_diff"):
            gaps = [r[key] for r in results]
            combined[f"{key}_mean"], combined[f"{key}_std"] = float(np.mean(gaps)), float(np.std(gaps, ddof=1))
        print(
            f"over {len(results)} seeds: final loss {100 * combined['final_loss_rel_diff_mean']:+.2f}% "
            f"(std {100 * combined['final_loss_rel_diff_std']:.2f}%), held-out loss "
            f"{100 * combined['eval_loss_rel_diff_mean']:+.2f}% (std {100 * combined['eval_loss_rel_diff_std']:.2f}%)"
        )
    return combined


def save_plot(result: dict, path: pathlib.Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed (pip install matplotlib): no plot written, the curves are in {path}.json")
        return
    runs = result["runs"]
    fig, axes = plt.subplots(2 if len(runs) == 2 else 1, 1, figsize=(7, 6 if len(runs) == 2 else 4), squeeze=False)
    ax = axes[0, 0]
    for name, run in runs.items():
        label = f"{name}: {run['step_ms']:.1f} ms/step, final {run['final_loss']:.3f}"
        ax.plot(np.arange(len(run["losses"])), run["losses"], label=label, linewidth=1)
    c = result["config"]
    ax.set(
        ylabel="training loss (nats/byte)",
        title=f"MoE LM {c['layers']}x{c['hidden']}, {c['experts']} experts top-{c['top_k']}, seq {c['seq']}",
    )
    ax.legend()
    if len(runs) == 2:  # the relative gap, each curve smoothed over 10 steps
        smooth = [np.convolve(runs[n]["losses"], np.ones(10) / 10, mode="valid") for n in ("fp8", "bf16")]
        axes[1, 0].plot(np.arange(smooth[0].size) + 9, 100 * (smooth[0] - smooth[1]) / smooth[1], linewidth=1)
        axes[1, 0].axhline(0.0, color="gray", linewidth=0.5)
        axes[1, 0].set(xlabel="step", ylabel="fp8 - bf16 (%, 10-step mean)")
    else:
        ax.set(xlabel="step")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    print(f"wrote {path.with_suffix('.png')}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choices = {"recipe": ("rowwise", "tensor"), "grad_dtype": ("e5m2", "e4m3")}
    for field in dataclasses.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(field.default), default=None, choices=choices.get(field.name))
    parser.add_argument("--tiny", action="store_true", help="the CPU configuration, also on a GPU")
    parser.add_argument("--no-reference", action="store_true", help="train the FP8 model only")
    parser.add_argument("--log-every", type=int, default=None)
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train both runs for seeds seed .. seed+N-1 and report the loss gaps' mean and spread (the gap of one "
        "pair of runs moved by 2.4%% between two processes on the H200)",
    )
    parser.add_argument("--out", default="train_moe", help="path prefix of the .png and .json written")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    on_gpu = hopper_gpu_visible() and not args.tiny
    base = GPU if on_gpu else TINY
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}
    config = dataclasses.replace(base, **overrides)
    device = jax.devices()[0] if on_gpu else jax.devices("cpu")[0]
    if not on_gpu:
        print(
            "No Hopper GPU (or --tiny): the tiny configuration on the CPU, where jax_dgpt runs its exact reference "
            "of the FP8 GEMMs (slow; the FP8 arithmetic is the same)."
        )
    print(f"config: {config}  device: {device}")
    if args.seeds < 1:
        raise SystemExit("train_moe: --seeds must be at least 1")
    results = []
    for seed in range(config.seed, config.seed + args.seeds):
        seeded = dataclasses.replace(config, seed=seed)
        runs = []
        with jax.default_device(device):
            for use_fp8 in (True,) if args.no_reference else (True, False):
                print(f"training {'fp8' if use_fp8 else 'bf16 reference'} for {seeded.steps} steps (seed {seed})")
                runs.append(train(seeded, use_fp8, log_every=args.log_every or max(1, seeded.steps // 20)))
        if len(runs) == 2 and runs[0].init_fingerprint != runs[1].init_fingerprint:
            raise RuntimeError("train_moe: the two runs did not start from the same parameters")
        results.append(summary(seeded, runs))
        report(results[-1])
    result = results[0] if len(results) == 1 else across_seeds(results)
    out = pathlib.Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out.with_suffix('.json')}")
    save_plot(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
