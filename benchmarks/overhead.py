"""Lightning overhead: training steps/s of a Lightning fit against a bare PyTorch loop.

Same model (the supervised mask U-Net of the demo experiment), same batches from the same DataModule, same
batch size and optimizer. The two are measured alternately in one process (bare, Lightning, bare, Lightning),
each after warm-up steps, and the best round of each is compared, so machine noise hits both alike.

usage: python benchmarks/overhead.py [--root data/demo-speech-noise] [--steps 60] [--rounds 2] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from lightning_sep.data.datamodule import SeparationDataModule
from lightning_sep.experiment import dataset_summary, load
from lightning_sep.methods import METHODS

REPO = Path(__file__).resolve().parent.parent


class StepClock(pl.Callback):
    """Times the steps after warm-up from inside the Lightning loop."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def build(cfg):
    method = METHODS[cfg.method]
    info = SeparationDataModule(cfg.data, {}).info
    data = SeparationDataModule(cfg.data, method.train_pools(info, cfg), seed=cfg.seed)
    model = method(OmegaConf.to_container(cfg, resolve=True), dataset_summary(data.info))
    return data, model


def bare(cfg, steps: int, warmup: int) -> float:
    torch.manual_seed(cfg.seed)
    data, model = build(cfg)
    configured = model.configure_optimizers()
    opt = configured["optimizer"] if isinstance(configured, dict) else configured
    sched = configured["lr_scheduler"]["scheduler"] if isinstance(configured, dict) else None
    model.train()
    loader = iter(data.train_dataloader())
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        batch = next(loader)
        loss = model.training_losses(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return steps / (time.perf_counter() - start)


def lightning(cfg, steps: int, warmup: int) -> float:
    torch.manual_seed(cfg.seed)
    data, model = build(cfg)
    clock = StepClock(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(default_root_dir=tmp, max_steps=warmup + steps, max_epochs=-1, accelerator="cpu",
                             devices=1, logger=pl.loggers.CSVLogger(tmp), enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             use_distributed_sampler=False, callbacks=[clock], log_every_n_steps=25)
        trainer.fit(model, datamodule=data)
    return steps / (clock.end - clock.start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "experiments/supervised/demo_speech_noise.yaml"))
    p.add_argument("--root", default="data/demo-speech-noise")
    p.add_argument("--steps", type=int, default=60, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    # batches_per_epoch > steps: no epoch boundary (and no loader restart) inside a timed round
    cfg = load(a.config, [f"data.root={a.root}", f"data.batches_per_epoch={a.steps + a.warmup + 10}"])
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for r in range(a.rounds):
        rows.append(("bare PyTorch", r, bare(cfg, a.steps, a.warmup)))
        rows.append(("Lightning fit", r, lightning(cfg, a.steps, a.warmup)))
    best_bare = max(s for n, _, s in rows if n == "bare PyTorch")
    best_pl = max(s for n, _, s in rows if n == "Lightning fit")
    res = {"ratio": best_pl / best_bare, "lightning_steps_per_s": best_pl, "bare_steps_per_s": best_bare,
           "steps": a.steps, "rounds": a.rounds, "batch_size": cfg.data.batch_size}
    print(f"overhead benchmark: {cfg.experiment}, batch {cfg.data.batch_size}, {a.steps} timed steps per round")
    print(f"{'loop':<16}{'round':>6}{'steps/s':>10}")
    for name, r, s in rows:
        print(f"{name:<16}{r:>6}{s:>10.2f}")
    print(f"ratio (Lightning / bare, best rounds): {res['ratio']:.3f}  (target >= 0.9)")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
