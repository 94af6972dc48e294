"""Reference numbers of issue 27 (no behaviour change): one tiny seeded run per family (unet, ae, vae, dcgan,
dcgan with inverter and parameters, aae, ddpm, flow; 16 px, 2 steps, CPU), printing every metrics.jsonl row
without its timings. Run it before and after a refactor of the training path; the outputs must be identical:

    PYTHONPATH=$PWD python bench/family_numbers.py 2>/dev/null | grep ^REF > before.txt
"""
import json
import logging
import sys
import tempfile
from pathlib import Path

from sandbox import build_trainer, load_config

logging.disable(logging.WARNING)

COMMON = ["data.size=16", "data.num_train=8", "data.num_val=4", "data.batch_size=4", "model.width=4",
          "model.depth=2", "train.epochs=1", "train.log_every=1", "train.num_images=2", "track.wandb=disabled",
          "train.mixed_precision=no", "train.threads=1"]
GEN = ["data.name=attractors", "model.latent_dim=4", "train.fid_samples=8", "train.probe_samples=8"]
FAMILIES = {
    "unet": ["model.name=unet"],
    "ae": ["model.name=ae", "loss={image: {mse: 1.0}}", "train.monitor=val/loss", "train.monitor_mode=min", *GEN],
    "vae": ["model.name=vae", "loss={image: {mse: 1.0}}", "train.monitor=val/loss", "train.monitor_mode=min",
            "train.kl_warmup_frac=0.5", *GEN],
    "dcgan": ["model.name=dcgan", "train.monitor=val/fid_own", "train.monitor_mode=min", "model.ema=0.9",
              "train.label_smoothing=0.1", *GEN],
    "dcgan_inv": ["model.name=dcgan", "train.monitor=val/fid_own", "train.monitor_mode=min", "model.invert=true",
                  "train.param_mse=2.0", "train.n_critic=2", *GEN],
    "aae": ["model.name=aae", "loss={image: {mse: 1.0}}", "train.monitor=val/loss", "train.monitor_mode=min",
            "model.prior=mixture", "model.prior_components=3", "model.ema=0.9", *GEN],
    "ddpm": ["model.name=ddpm", "model.norm=group", "data.name=attractors", "train.monitor=val/loss", "train.monitor_mode=min",
             "train.fid_samples=8", "model.sample_steps=2", "model.min_snr=5"],
    "flow": ["model.name=flow", "model.norm=group", "data.name=attractors", "train.monitor=val/loss", "train.monitor_mode=min",
             "train.fid_samples=8", "model.sample_steps=2", "model.t_sampling=logit_normal"],
}
TIMINGS = ("time", "epoch_time", "train_time", "images_per_s", "wall", "timestamp")


def main() -> None:
    only = sys.argv[1:] or list(FAMILIES)
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            cfg = load_config(None, [f"out_dir={tmp}", f"name={name}", *COMMON, *FAMILIES[name]])
            build_trainer(cfg).fit()
            for line in (Path(tmp) / name / "metrics.jsonl").read_text().splitlines():
                r = json.loads(line)
                keep = {k: v for k, v in sorted(r.items()) if k not in TIMINGS}
                print("REF", name, json.dumps(keep))


if __name__ == "__main__":
    main()
