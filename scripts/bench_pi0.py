#!/usr/bin/env python
"""PI0 performance benchmark: training-step time/memory/MFU and select_action latency.

Not a test: it times whatever device it runs on. On CUDA it builds the `full` preset directly on
the GPU (random weights, bf16 backbone); on CPU the `tiny` preset. Every case runs in its own
try/except, so an OOM or a failing fast path is recorded in the output instead of ending the run.

  python scripts/bench_pi0.py --out-json $OUT/bench_pi0.json --out-md $OUT/bench_pi0.md --compile

Sections:
  train   fwd + bwd + AdamW step over the trainable parameters for: plain flow matching (one
          branch), CFG-Flow naive (two joint passes), CFG-Flow shared prefix (one VLM pass, 2B-row
          suffix); each with and without gradient checkpointing; ratios to plain; MFU from
          FLOPs counted by torch.utils.flop_counter.FlopCounterMode on one step (matmuls and
          attention, fwd + bwd; elementwise ops not counted; checkpointing recompute excluded, i.e.
          model FLOPs of the run without checkpointing).
  sample  PI0Policy.select_action latency (batch 1 and 8, cfg_scale 1 and 2) per sampler mode:
          eager, cuda_graph, and with --compile: compile, compile+cuda_graph; plus the eager
          breakdown (prefix pass, one Euler step) at batch 1, and each fast mode's max |diff|
          against the eager actions for the same noise.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openpi_pytorch_ori.pi0 import PI0Config, PI0Policy  # noqa: E402
from openpi_pytorch_ori.pi0.modeling_pi0 import CUDAGraphSampler  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name substring, most specific first.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A10G", 125.0), ("L40S", 362.0),
    ("RTX 4090", 165.2), ("A6000", 154.8),
]
# The public PyTorch port on one H100 (docs/reference_benchmark.md): the numbers to beat.
REFERENCE_MS = {"select_action_b1": 343.0, "select_action_b8": 410.0, "train_plain": 298.0,
                "train_cfg_naive": 554.0, "euler_step_b1": 28.0, "prefix_b1": 25.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--preset", default=None, help="full | tiny (default: full on CUDA, tiny on CPU)")
    parser.add_argument("--dtype", default=None, help="bfloat16 | float32 (default: bfloat16 on CUDA)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="joint attention implementation")
    parser.add_argument("--batch", type=int, default=8, help="training windows per step")
    parser.add_argument("--sample-batches", default="1,8")
    parser.add_argument("--cfg-scales", default="1,2")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sections", default="train,sample")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile sampler modes")
    parser.add_argument("--compile-batches", default="1",
                        help="batches for the compile modes (each new shape is a fresh compile)")
    parser.add_argument("--compile-start-by-s", type=float, default=270.0,
                        help="compile cases starting after this many seconds are skipped (a compile can't be cut short)")
    parser.add_argument("--train-variants", default="plain,cfg_naive,cfg_shared,cfg_shared_il",
                        help="training-step variants to time (eager layers)")
    parser.add_argument("--compile-train", action="store_true",
                        help="also time plain and cfg_shared_il with torch.compile'd layers (compile_layers)")
    parser.add_argument("--no-cuda-graph", action="store_true", help="skip the CUDA-graph sampler modes")
    parser.add_argument("--no-eager-attn-case", action="store_true",
                        help="skip the extra plain training case with eager attention")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="torch threads on CPU (1: tiny models only lose to OpenMP spin-waiting)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 dense peak")
    parser.add_argument("--time-budget-s", type=float, default=420.0,
                        help="cases starting after this many seconds are skipped (recorded as such)")
    parser.add_argument("--keep-missing-cameras", action="store_true",
                        help="run SigLIP + the VLM on the missing camera slot as masked padding (run 1's workload)")
    parser.add_argument("--profile-dir", default=None, help="write torch.profiler tables here")
    parser.add_argument("--out-json", default=None)
    parser.add_argument("--out-md", default=None)
    return parser.parse_args(argv)


# ============================================================================ setup


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)  # torch.cuda.set_device needs an index
    return device


def build_policy(args: argparse.Namespace, device: torch.device) -> PI0Policy:
    """Random-weight PI0 built directly on `device` (no slow CPU init of 3.5B parameters)."""
    config = PI0Config.preset(args.preset, dtype=args.dtype, attention_implementation=args.attn,
                              tokenizer_path=None)
    torch.manual_seed(0)
    with torch.device(device):
        policy = PI0Policy(config)
    return policy.to(device)


def make_batch(config: PI0Config, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Raw observation batch as a rollout hands it over (CPU tensors): 2 cameras + 1 missing,
    language padded to tokenizer_max_length with ~40% valid tokens (20 of 48 at full size)."""
    gen = torch.Generator().manual_seed(seed)
    size = config.vision.image_size
    lang_len = config.tokenizer_max_length
    valid = max(2, round(lang_len * 20 / 48))
    lang_masks = (torch.arange(lang_len) < valid)[None, :].expand(batch_size, -1).clone()  # (B, L)
    return {
        "image.base_0_rgb": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen),
        "image.left_wrist_0_rgb": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen),
        "state": torch.randn(batch_size, config.state_dim, generator=gen),
        "lang_tokens": torch.randint(3, min(config.vlm.vocab_size, 250_000), (batch_size, lang_len),
                                     generator=gen) * lang_masks,
        "lang_masks": lang_masks,
        "action": torch.randn(batch_size, config.chunk_size, config.action_dim, generator=gen),
    }


# ============================================================================ timing


class Timer:
    """Median wall time of `fn` in ms (CUDA events on GPU, perf_counter on CPU) + peak memory."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, fn: Callable[[], Any], iters: int, warmup: int) -> dict[str, Any]:
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(iters):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
                "iters": iters, "warmup": warmup}

    def reset_peak(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**30


class Runner:
    """Runs named cases with error capture and the overall time budget."""

    def __init__(self, budget_s: float, on_record: Callable[[], None] = lambda: None):
        self.t0, self.budget_s, self.on_record = time.perf_counter(), budget_s, on_record

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def case(self, name: str, fn: Callable[[], dict[str, Any]], budget_s: float | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"case": name}
        budget_s = self.budget_s if budget_s is None else min(budget_s, self.budget_s)
        if self.elapsed() > budget_s:
            record["skipped"] = f"time budget {budget_s:.0f}s used up"
        else:
            t0 = time.perf_counter()
            try:
                record.update(fn())
            except Exception as error:  # noqa: BLE001 -- recorded, the run goes on (e.g. OOM)
                record["error"] = f"{type(error).__name__}: {str(error)[:400]}"
                record["traceback_tail"] = traceback.format_exc()[-1500:]
            record["case_wall_s"] = round(time.perf_counter() - t0, 2)
        print(json.dumps({k: v for k, v in record.items() if k != "traceback_tail"}), flush=True)
        return record

    def recorded(self, records: list[dict], record: dict) -> None:
        """Append and write the report so far (a run killed by an outer timeout keeps its numbers)."""
        records.append(record)
        self.on_record()


# ============================================================================ training


def training_step_fn(policy: PI0Policy, inputs: tuple, actions: torch.Tensor, variant: str,
                     optimizer: torch.optim.Optimizer, optimizer_step: bool = True) -> Callable[[], None]:
    model = policy.model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if variant == "plain":
            loss = model(*inputs, actions).mean()
        else:
            shared = {"cfg_naive": False, "cfg_shared": True, "cfg_shared_il": "interleaved"}[variant]
            pos, uncond = model.forward_cfg(*inputs, actions, shared_prefix=shared)
            loss = pos.mean() + uncond.mean()  # stand-in for the advantage-weighted sum: same compute
        loss.backward()
        if optimizer_step:
            optimizer.step()

    return step


def count_step_flops(step: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def train_section(policy: PI0Policy, args, device, timer: Timer, runner: Runner, peak_flops,
                  records: list[dict]) -> list[dict]:
    policy.train()
    batch = make_batch(policy.config, args.batch)
    images, img_masks, lang_tokens, lang_masks, state = policy._prepare_observation(batch)
    actions, _ = policy.prepare_action(batch)
    inputs = (images, img_masks, lang_tokens, lang_masks, state)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    pwe = policy.model.paligemma_with_expert
    model_flops: dict[str, int] = {}
    # cfg_shared: prefix pass, then a 2B-row expert pass against the repeated prefix K/V (run 1);
    # cfg_shared_il: branches folded into the query length, expert layers between the VLM layers.
    # (variant, checkpointing, attention, compiled layers, optimizer step)
    variants = args.train_variants.split(",")
    cases = [(v, ckpt, args.attn, False, True) for ckpt in (False, True) for v in variants]
    if not args.no_eager_attn_case and args.attn != "eager":
        cases.append(("plain", False, "eager", False, True))
    cases.append(("plain", False, args.attn, False, False))  # fwd + bwd alone: what AdamW costs
    if args.compile_train:
        cases += [(v, ckpt, args.attn, True, True) for ckpt in (False, True) for v in ("plain", "cfg_shared_il")]
        cases.append(("plain", False, args.attn, True, False))
    for variant, ckpt, attn, compiled, with_optimizer in cases:
        name = (f"train/{variant}/{'ckpt' if ckpt else 'no_ckpt'}/{attn}{'/compiled' if compiled else ''}"
                f"{'' if with_optimizer else '/no_optimizer_step'}")

        def run_case(variant=variant, ckpt=ckpt, attn=attn, compiled=compiled,
                     with_optimizer=with_optimizer) -> dict[str, Any]:
            pwe.gradient_checkpointing = ckpt
            policy.config.attention_implementation = attn  # read per forward by attention_plan
            pwe.compile_layers(compiled)
            optimizer = torch.optim.AdamW(trainable, lr=1e-6, fused=device.type == "cuda")
            try:
                timer.reset_peak()
                step = training_step_fn(policy, inputs, actions, variant, optimizer, with_optimizer)
                t_first = time.perf_counter()
                step()  # the first step compiles when `compiled`: timed on its own, not as a warm-up
                timer.sync()
                result = {"first_step_s": time.perf_counter() - t_first}
                result.update(timer.run(step, args.iters, args.warmup))
                result["peak_gib"] = timer.peak_gib()
                if variant not in model_flops and not ckpt:
                    model_flops[variant] = count_step_flops(step)
                flops = model_flops.get(variant)
                if flops is not None:
                    result["model_tflop_per_step"] = flops / 1e12
                    result["achieved_tflops"] = flops / (result["median_ms"] / 1e3) / 1e12
                    if peak_flops:
                        result["mfu"] = flops / (result["median_ms"] / 1e3) / peak_flops
                return result
            finally:
                optimizer.zero_grad(set_to_none=True)
                del optimizer
                pwe.gradient_checkpointing = False
                policy.config.attention_implementation = args.attn
                pwe.compile_layers(False)

        record = runner.case(name, run_case)
        record.update(variant=variant, gradient_checkpointing=ckpt, attention=attn, batch=args.batch,
                      compiled_layers=compiled, optimizer_step=with_optimizer)
        runner.recorded(records, record)
    _add_ratios(records)
    policy.eval()
    return records


def _add_ratios(records: list[dict]) -> None:
    def key(r: dict) -> tuple:
        return r["gradient_checkpointing"], r["attention"], r.get("compiled_layers"), r.get("optimizer_step")

    plain = {key(r): r.get("median_ms") for r in records if r["variant"] == "plain"}
    for record in records:
        base = plain.get(key(record))
        if base and record.get("median_ms"):
            record["ratio_to_plain"] = record["median_ms"] / base


# ============================================================================ sampling


def sample_section(policy: PI0Policy, args, device, timer: Timer, runner: Runner, records: list[dict]) -> list[dict]:
    policy.eval()
    batches = [int(b) for b in args.sample_batches.split(",")]
    scales = [float(s) for s in args.cfg_scales.split(",")]
    modes = ["eager"]
    if device.type == "cuda" and not args.no_cuda_graph:
        modes.append("cuda_graph")
    if args.compile:
        modes.append("compile")
        if device.type == "cuda" and not args.no_cuda_graph:
            modes.append("compile+cuda_graph")
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    config = policy.config
    observations = {b: make_batch(config, b, seed=b) for b in batches}
    noises = {b: torch.randn(b, config.chunk_size, config.max_action_dim, generator=torch.Generator().manual_seed(b))
              .to(device) for b in batches}
    reference: dict[tuple, torch.Tensor] = {}
    runner.recorded(records, runner.case("sample/breakdown/eager/b1",
                                         lambda: eager_breakdown(policy, observations, timer, args)))
    compile_batches = [int(b) for b in args.compile_batches.split(",") if int(b) in batches]
    for mode in modes:
        for batch in (compile_batches if "compile" in mode else batches):
            for scale in scales:
                def run_case(mode=mode, batch=batch, scale=scale) -> dict[str, Any]:
                    policy.compile_sampler(mode)
                    timer.reset_peak()
                    obs, noise = observations[batch], noises[batch]
                    t0 = time.perf_counter()
                    actions = policy.select_action(obs, cfg_scale=scale, noise=noise)  # compiles / captures
                    timer.sync()
                    result: dict[str, Any] = {"first_call_s": time.perf_counter() - t0}
                    key = (batch, scale)
                    if mode == "eager":
                        reference[key] = actions.float()
                    elif key in reference:
                        result["max_abs_diff_vs_eager"] = (actions.float() - reference[key]).abs().max().item()
                    result.update(timer.run(lambda: policy.select_action(obs, cfg_scale=scale), args.iters, args.warmup))
                    result["peak_gib"] = timer.peak_gib()
                    return result

                budget = args.compile_start_by_s if mode == "compile" else None
                record = runner.case(f"sample/{mode}/b{batch}/cfg{scale:g}", run_case, budget)
                record.update(mode=mode, batch=batch, cfg_scale=scale)
                runner.recorded(records, record)
    policy.compile_sampler("eager")
    by_key = {(r.get("mode"), r.get("batch"), r.get("cfg_scale")): r.get("median_ms") for r in records}
    for record in records[1:]:
        base = by_key.get((record["mode"], record["batch"], 1.0))
        if base and record.get("median_ms"):
            record["ratio_to_cfg1"] = record["median_ms"] / base
    return records


def eager_breakdown(policy: PI0Policy, observations: dict, timer: Timer, args) -> dict[str, Any]:
    """Batch-1 eager pieces comparable to the reference's breakdown: prefix pass, one Euler step."""
    model = policy.model
    obs = observations[min(observations)]
    with torch.no_grad():
        images, img_masks, lang_tokens, lang_masks, state = policy._prepare_observation(obs)
        prefix = lambda: model.build_prefix_cache(images, img_masks, lang_tokens, lang_masks)
        cache = prefix()
        plan = model.suffix_attention_plan(cache)
        x_t = torch.randn(state.shape[0], model.config.chunk_size, model.config.max_action_dim, device=state.device)
        t = torch.full((), 0.5, device=state.device)
        step = lambda: model.euler_step(cache, state, x_t, t, 1, plan, 1.0, -0.1)
        prefix_t = timer.run(prefix, args.iters, args.warmup)
        step_t = timer.run(step, args.iters, args.warmup)
        prepare_t = timer.run(lambda: policy._prepare_observation(obs), args.iters, args.warmup)
        result = {"batch": state.shape[0], "prefix_pass_ms": prefix_t["median_ms"],
                  "euler_step_ms": step_t["median_ms"], "prepare_observation_ms": prepare_t["median_ms"]}
        if timer.device.type == "cuda" and not args.no_cuda_graph:
            # The captured sample alone (inputs already on the device): splits select_action's
            # cuda_graph latency into graph replay vs eager input preparation / host work.
            graphed = CUDAGraphSampler(model)
            noise = model.sample_noise(x_t.shape, state.device)
            inputs = (images, img_masks, lang_tokens, lang_masks, state, noise)
            for scale in (1.0, 2.0):
                graphed(*inputs, scale)
                result[f"graph_replay_cfg{scale:g}_ms"] = timer.run(
                    lambda scale=scale: graphed(*inputs, scale), args.iters, args.warmup)["median_ms"]
            del graphed
    return result


# ============================================================================ profiling


def profile(policy: PI0Policy, args, device, out_dir: Path) -> None:
    """Top ops of one shared-prefix training step and one batch-1 select_action (eager)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    policy.train()
    batch = make_batch(policy.config, args.batch)
    inputs = policy._prepare_observation(batch)
    actions, _ = policy.prepare_action(batch)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6,
                                  fused=device.type == "cuda")
    # (variant, compiled layers); the compiled step is profiled only when its cases were timed
    cases = [("plain", False), ("cfg_shared", False), ("cfg_shared_il", False)]
    if args.compile_train:
        cases.append(("plain", True))
    pwe = policy.model.paligemma_with_expert
    for variant, compiled in cases:
        pwe.compile_layers(compiled)
        try:
            step = training_step_fn(policy, inputs, actions, variant, optimizer)
            step()  # warm-up (and the compile, when `compiled`) outside the profile
            with torch_profile(activities=activities, record_shapes=True) as prof:
                step()
                Timer(device).sync()
        finally:
            pwe.compile_layers(False)
        averages = prof.key_averages()
        by_shape = prof.key_averages(group_by_input_shape=True)
        (out_dir / f"profile_train_{variant}{'_compiled' if compiled else ''}.txt").write_text(
            averages.table(sort_by=sort_key, row_limit=60) + "\n\nBy input shape:\n"
            + by_shape.table(sort_by=sort_key, row_limit=40, max_name_column_width=40,
                             max_shapes_column_width=120))
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    policy.eval()
    obs = make_batch(policy.config, 1)
    policy.select_action(obs)
    with torch_profile(activities=activities) as prof:
        policy.select_action(obs)
        Timer(device).sync()
    (out_dir / "profile_select_action_b1_eager.txt").write_text(
        prof.key_averages().table(sort_by=sort_key, row_limit=30))
    if device.type == "cuda":  # kernels inside the replayed graph (CUPTI traces them) + host work around it
        policy.compile_sampler("cuda_graph")
        policy.select_action(obs)
        with torch_profile(activities=activities) as prof:
            policy.select_action(obs)
            Timer(device).sync()
        policy.compile_sampler("eager")
        (out_dir / "profile_select_action_b1_cuda_graph.txt").write_text(
            prof.key_averages().table(sort_by=sort_key, row_limit=30))


# ============================================================================ report


def environment(policy: PI0Policy, args, device, peak_flops) -> dict[str, Any]:
    import transformers

    n_params = sum(p.numel() for p in policy.parameters())
    n_trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    config = policy.config
    slots = len(config.image_slots)
    tokens_per_image = (config.prefix_length - config.tokenizer_max_length) // slots
    cameras = 2 if policy.drop_missing_cameras else slots  # make_batch: 2 cameras present
    prefix_tokens = cameras * tokens_per_image + config.tokenizer_max_length
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type, "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
        "preset": args.preset, "dtype": args.dtype, "attention": args.attn, "train_batch": args.batch,
        "iters": args.iters, "warmup": args.warmup, "peak_bf16_tflops": peak_flops / 1e12 if peak_flops else None,
        "parameters": n_params, "trainable_parameters": n_trainable,
        "prefix_tokens": prefix_tokens, "suffix_tokens": policy.config.suffix_length,
        "drop_missing_cameras": policy.drop_missing_cameras,
        "flop_count_method": "torch.utils.flop_counter.FlopCounterMode, one step, matmul+attention fwd+bwd, "
                             "no recompute (the no-checkpointing run's count is used for both)",
    }


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"### PI0 benchmark on {env['device']}", "",
             f"torch {env['torch']}, transformers {env['transformers']}, CUDA {env['cuda']}, python {env['python']}; "
             f"preset `{env['preset']}`, dtype {env['dtype']}, attention {env['attention']}, "
             f"{env['parameters']:,} parameters ({env['trainable_parameters']:,} trainable), prefix "
             f"{env['prefix_tokens']} + suffix {env['suffix_tokens']} tokens; medians of {env['iters']} after "
             f"{env['warmup']} warm-ups; wall {report['wall_s']:.0f} s.", ""]
    if report.get("train"):
        lines += ["Training step (fwd + bwd + AdamW), batch of "
                  f"{env['train_batch']} windows, 2 cameras + 1 missing "
                  f"({'missing slot dropped' if env.get('drop_missing_cameras') else 'missing slot run as padding'}):", "",
                  "| Variant | Checkpointing | Attention | Layers | AdamW | Median ms | × plain | Peak GiB | "
                  "Model TFLOP/step | MFU | Note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["train"]:
            note = r.get("error") or r.get("skipped") or ""
            if r.get("compiled_layers") and (r.get("first_step_s") or 0) > 1:
                note = note or f"first step (compile) {r['first_step_s']:.0f} s"
            lines.append(f"| {r['variant']} | {'yes' if r['gradient_checkpointing'] else 'no'} | {r['attention']} | "
                         f"{'compiled' if r.get('compiled_layers') else 'eager'} | "
                         f"{'yes' if r.get('optimizer_step', True) else 'no'} | "
                         f"{_fmt(r.get('median_ms'))} | {_fmt(r.get('ratio_to_plain'), '.2f')} | "
                         f"{_fmt(r.get('peak_gib'))} | {_fmt(r.get('model_tflop_per_step'), '.3g')} | "
                         f"{_fmt(r.get('mfu') and 100 * r['mfu'], '.1f')}{'%' if r.get('mfu') else ''} | {note[:80]} |")
        lines.append("")
    if report.get("sample"):
        breakdown = report["sample"][0]  # the eager breakdown case
        lines += [f"Eager batch-1 breakdown: prefix pass {_fmt(breakdown.get('prefix_pass_ms'), '.2f')} ms, "
                  f"one Euler step {_fmt(breakdown.get('euler_step_ms'), '.2f')} ms, input preparation "
                  f"{_fmt(breakdown.get('prepare_observation_ms'), '.2f')} ms; captured sample alone (graph "
                  f"replay, device inputs) cfg 1 {_fmt(breakdown.get('graph_replay_cfg1_ms'), '.2f')} ms, cfg 2 "
                  f"{_fmt(breakdown.get('graph_replay_cfg2_ms'), '.2f')} ms {breakdown.get('error', '')}", "",
                  "`select_action` latency (images as CPU uint8, 10 Euler steps):", "",
                  "| Mode | Batch | cfg_scale | Median ms | × cfg 1 | Peak GiB | First call s | max abs diff vs eager | Note |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in report["sample"][1:]:
            note = r.get("error") or r.get("skipped") or ""
            lines.append(f"| {r['mode']} | {r['batch']} | {r['cfg_scale']:g} | {_fmt(r.get('median_ms'))} | "
                         f"{_fmt(r.get('ratio_to_cfg1'), '.2f')} | {_fmt(r.get('peak_gib'))} | "
                         f"{_fmt(r.get('first_call_s'), '.1f')} | {_fmt(r.get('max_abs_diff_vs_eager'), '.2g')} | "
                         f"{note[:80]} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    args.preset = args.preset or ("full" if on_cuda else "tiny")
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    if not on_cuda:
        torch.set_num_threads(args.cpu_threads)
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # only float32 matmuls (heads) are affected
        torch.cuda.set_device(device)
    peak_flops = None
    if args.peak_tflops:
        peak_flops = args.peak_tflops * 1e12
    elif on_cuda:
        name = torch.cuda.get_device_name(device)
        peak_flops = next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS if key in name), None)
    report: dict[str, Any] = {"reference_ms": REFERENCE_MS, "train": [], "sample": []}
    runner, timer = Runner(args.time_budget_s, lambda: write_report(report, runner, args)), Timer(device)
    t_build = time.perf_counter()
    policy = build_policy(args, device)
    policy.drop_missing_cameras = not args.keep_missing_cameras
    timer.sync()
    report["environment"] = environment(policy, args, device, peak_flops)
    report["build_s"] = time.perf_counter() - t_build
    report["environment"]["weights_gib"] = (torch.cuda.memory_allocated(device) / 2**30) if on_cuda else None
    print(json.dumps(report["environment"]), flush=True)
    sections = set(args.sections.split(","))
    # Training first: its numbers matter most, and the compile cases (last) take the longest.
    if "train" in sections:
        train_section(policy, args, device, timer, runner, peak_flops, report["train"])
    if "sample" in sections:
        sample_section(policy, args, device, timer, runner, report["sample"])
    if args.profile_dir and runner.elapsed() < args.time_budget_s:
        try:
            profile(policy, args, device, Path(args.profile_dir))
        except Exception as error:  # noqa: BLE001 -- profiling is optional
            report["profile_error"] = f"{type(error).__name__}: {str(error)[:300]}"
    text = write_report(report, runner, args)
    print(text)
    return report


def write_report(report: dict[str, Any], runner: Runner, args: argparse.Namespace) -> str:
    report["wall_s"] = runner.elapsed()
    text = markdown(report) if "environment" in report else ""
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(report, indent=1, default=str))
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(text)
    return text


if __name__ == "__main__":
    main()
