"""Run by tests/test_data.py as a 2-process CPU DDP job: records what each rank's loaders yield.

usage: python ddp_data_probe.py DATASET_ROOT OUT_DIR
Each rank writes OUT_DIR/rank<r>.json with its training batch count and the clip ids it evaluated.
"""
import json
import sys
from pathlib import Path


def main() -> None:
    # imported here, not at the top: each loader worker re-imports this script (workers start from a fork server)
    import pytorch_lightning as pl
    import torch

    from lightning_sep.data.datamodule import SeparationDataModule
    from lightning_sep.data.streams import DataConfig, PoolSpec

    class Probe(pl.LightningModule):
        def __init__(self, out: Path):
            super().__init__()
            self.out, self.layer = out, torch.nn.Linear(1, 1)
            self.train_batches, self.val_keys, self.test_keys = 0, [], []

        def training_step(self, batch, idx):
            self.train_batches += 1
            assert set(batch) == {"observed", "mixtures"} and "speech" not in batch["mixtures"]
            return self.layer(batch["observed"]["noise"][:, :1]).mean()  # gradients are all-reduced every step

        def validation_step(self, batch, idx):
            self.val_keys += batch["key"]

        def test_step(self, batch, idx):
            self.test_keys += batch["key"]

        def on_test_end(self):
            record = {"rank": self.global_rank, "world": self.trainer.world_size, "train_batches": self.train_batches,
                      "val_keys": self.val_keys, "test_keys": self.test_keys}
            (self.out / f"rank{self.global_rank}.json").write_text(json.dumps(record))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    root, out = sys.argv[1], Path(sys.argv[2])
    cfg = DataConfig(root=root, segment_seconds=0.5, batch_size=3, batches_per_epoch=5, num_workers=2,
                     shuffle_buffer=8)
    pools = {"observed": PoolSpec("train", "observed", ["noise"]), "mixtures": PoolSpec("train", "mixtures", ["mix"])}
    data = SeparationDataModule(cfg, pools, seed=0, forbidden=("speech",))
    model = Probe(out)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=7, max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False,
                         num_sanity_val_steps=0, val_check_interval=5, check_val_every_n_epoch=None,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)


if __name__ == "__main__":
    main()
