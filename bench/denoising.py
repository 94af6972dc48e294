"""ddpm/flow speed: the training step of the time-conditioned UNet against the plain UNet of the same
widths, and sampling img/s at 10/20/50 steps with Euler, Heun and DDIM.

    python bench/denoising.py                          # 32 px, width 16, depth 3, batch 32 (~3-6 min on 2 cores)
    python bench/denoising.py --size 64 --width 32 --no-wait --out denoising_64

Step: the denoising trainer's (x_t and t from the flow process, net(x_t, t), the process's MSE in
fp32, backward, clip 1.0, AdamW), timed round-robin against the same step of the plain core UNet
(same Encoder/Decoder widths, group norm, concat skips and 1x1 head, no time embedding: exactly what
the time conditioning adds), in fp32+cl and bf16+cl. ``ratio`` = plain s/step / time-conditioned
s/step (best round, owned time; goal >= 0.9). Sampling: the model in eval mode (its EMA net) from a
fixed noise batch; network evaluations per sample: Euler and DDIM ``steps``, Heun ``2 steps - 1``
(the last step is Euler). Untrained weights: the speed does not depend on them.
Results and where the time-conditioned step's extra time goes: bench/README.md, "Time-conditioned UNet
vs plain UNet" (issue 15, goal 0.9: on idle cores 0.90-0.92 best round at the CPU default bf16+cl, 0.76-0.89
in fp32+cl; ``+compile`` modes: what train.compile does).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/ is not a package)
import torch  # noqa: E402
from torch import nn  # noqa: E402

SAMPLERS = [("flow", "euler"), ("flow", "heun"), ("ddpm", "ddim")]
STEPS = (10, 20, 50)


class PlainUNet(nn.Module):
    """The TimeUNet without its time embedding: same core, widths, norm, skips and head."""

    def __init__(self, widths, norm="group"):
        super().__init__()
        from sandbox.nn.core import Decoder, Encoder

        self.encoder = Encoder(3, widths, norm=norm)
        self.decoder = Decoder(self.encoder.out_channels, widths, "concat", "transpose", norm=norm)
        self.out = nn.Conv2d(widths[0], 3, 1)

    def forward(self, x, t=None):
        return self.out(self.decoder(self.encoder(x)))


def make_step(net: nn.Module, mode: str):
    from sandbox.diffusion import FlowMatching
    from sandbox.engine.optim import make_optimizer

    cl, bf16 = "cl" in mode.split("+"), mode.startswith("bf16")
    net.train()
    if cl:
        net = net.to(memory_format=torch.channels_last)
    proc, opt = FlowMatching(), make_optimizer(net.parameters(), "adamw", lr=1e-3, weight_decay=1e-4)
    params = list(net.parameters())
    if "compile" in mode.split("+"):  # what train.compile does: the whole forward, one graph per net
        net = torch.compile(net)

    def step(x0: torch.Tensor) -> torch.Tensor:
        eps, t = torch.randn_like(x0), proc.sample_t(len(x0))
        x_t, target, w = proc.training_pair(x0, eps, t)
        x_t = x_t.contiguous(memory_format=torch.channels_last) if cl else x_t
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = net(x_t, t)
        loss = proc.loss(pred.float(), target, w)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def step_ratio(args) -> list[dict]:
    from sandbox.models.denoising import TimeUNet
    from sandbox.nn.core import stage_widths

    widths = stage_widths(args.width, None, args.depth)
    x0 = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rows, steps = [], []
    for mode in args.modes.split(","):
        for name, build in (("plain UNet", lambda: PlainUNet(widths)), ("time-conditioned UNet",
                                                                        lambda: TimeUNet(3, widths))):
            torch.manual_seed(0)
            net = build()
            step = make_step(net, mode)
            for _ in range(1 + args.warmup):
                step(x0).item()
            rows.append({"net": name, "mode": mode, "params_m": sum(p.numel() for p in net.parameters()) / 1e6})
            steps.append(step)
    timers = [[] for _ in steps]
    for r in range(args.rounds):
        for i, step in enumerate(steps):
            with common.Timer() as t:
                step(x0).item()
            timers[i].append(t)
        print(f"step round {r + 1}/{args.rounds}, load {common.load1():.2f}", flush=True)
    for row, ts in zip(rows, timers):
        row.update(s_step=min(t.owned for t in ts), s_step_wall=statistics.median(t.wall for t in ts),
                   step_times=[[round(t.wall, 4), round(t.owned, 4)] for t in ts])
        row["img_s"] = args.batch / row["s_step"]
    for plain, timed in zip(rows[::2], rows[1::2]):
        timed["ratio"] = plain["s_step"] / timed["s_step"]
        # the same ratio within each round (both steps timed back to back): robust to load that moves
        # between rounds; the median over rounds and its interquartile range
        per_round = sorted(a[1] / b[1] for a, b in zip(plain["step_times"], timed["step_times"]))
        q = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
        timed.update(ratio_round_median=statistics.median(per_round), ratio_round_q25=q[0], ratio_round_q75=q[2])
    return rows


def sampling(args) -> list[dict]:
    from sandbox.models import MODELS

    rows = []
    noise = torch.randn(args.sample_batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    for name, sampler in SAMPLERS:
        torch.manual_seed(0)
        model = MODELS[name](size=args.size, width=args.width, depth=args.depth, sampler=sampler).eval()
        for steps in STEPS:
            model.set_sample_steps(steps)
            with common.Timer() as t, torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.sample_bf16):
                model.decode(noise)
            evals = 2 * steps - 1 if sampler == "heun" else steps
            rows.append({"model": name, "sampler": sampler, "steps": steps, "net_evals": evals,
                         "s": t.owned, "s_wall": t.wall, "img_s": args.sample_batch / t.owned,
                         "img_s_wall": args.sample_batch / t.wall})
            print(f"sampled {name} {sampler} {steps} steps: {rows[-1]['img_s']:.1f} img/s", flush=True)
    return rows


def markdown(res: dict) -> str:
    a = res["args"]
    head = [f"Command: `{res['command']}`", "", f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, "
            f"torch {res['machine']['torch']} ({res['threads']} threads). Load (1-min avg): {res['load']}.", "",
            f"**Training step**, {a['size']} px, width {a['width']}, depth {a['depth']}, batch {a['batch']}, "
            f"{a['rounds']} round-robin rounds; s/step = best round in owned time (process CPU s / threads), "
            "wall = median wall clock. ratio = plain / time-conditioned s/step (goal >= 0.9).", ""]
    step = common.md_table(res["step"], [("net", "net", "s"), ("mode", "mode", "s"), ("params_m", "params (M)", ".3f"),
                                         ("s_step", "s/step (best)", ".3f"), ("s_step_wall", "s/step (wall)", ".3f"),
                                         ("img_s", "img/s (best)", ".1f"), ("ratio", "ratio", ".2f"),
                                         ("ratio_round_median", "ratio per round (median)", ".2f"),
                                         ("ratio_round_q25", "q25", ".2f"), ("ratio_round_q75", "q75", ".2f")])
    if not res["sampling"]:  # --no-sampling
        return "\n".join(head) + step + "\n"
    mid = ["", "", f"**Sampling**, {a['sample_batch']} images of {a['size']} px per call, "
           f"{'bf16' if a['sample_bf16'] else 'fp32'}; img/s in owned time (wall beside it).", ""]
    samp = common.md_table(res["sampling"], [("model", "model", "s"), ("sampler", "sampler", "s"),
                                             ("steps", "steps", "d"), ("net_evals", "net evals", "d"),
                                             ("img_s", "img/s", ".1f"), ("img_s_wall", "img/s (wall)", ".1f")])
    return "\n".join(head) + step + "\n".join(mid) + samp


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="training batch")
    p.add_argument("--modes", default="fp32+cl,bf16+cl",
                   help="fp32, fp32+cl, bf16, bf16+cl, each optionally +compile (comma list)")
    p.add_argument("--no-sampling", action="store_true", help="time the training step only")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sample-batch", type=int, default=32)
    p.add_argument("--sample-bf16", action="store_true", help="sample under bf16 autocast (default fp32)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--out", default="denoising")
    args = p.parse_args(argv)
    threads = common.set_threads(args.threads)
    quiet = {"load_before": round(common.load1(), 2)} if args.no_wait else common.wait_for_quiet(args.max_load)
    res = {"command": "python bench/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
           "machine": common.machine_info(), "threads": threads, "args": vars(args)}
    res["step"] = step_ratio(args)
    res["sampling"] = [] if args.no_sampling else sampling(args)
    res["load"] = {**quiet, "after": round(common.load1(), 2)}
    md = markdown(res)
    j, m = common.write_results(args.out, res, md)
    print(md)
    print(f"\nwrote {j} and {m}")


if __name__ == "__main__":
    main()
