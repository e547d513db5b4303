"""MaskNet end to end on the toy dataset: both optimizers, every loss term, resume, DDP, NaN, the inference keys."""
from __future__ import annotations

import copy
import csv
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, cli
from omegaconf import OmegaConf
from test_runs import ok

from lightning_sep import experiment
from lightning_sep.audio import STFT, STFTConfig
from lightning_sep.config import ConfigError
from lightning_sep.data.shards import DatasetInfo, DatasetWriter
from lightning_sep.methods.masknet import MaskNet, bilateral_filter

CONFIG = "experiments/masknet/demo_chorales.yaml"
TERMS = ["r1", "r2", "r3", "r4", "gan_a", "gan_c", "loss_g", "d_a", "d_c", "loss_d"]
ABLATIONS = {"no_r1": "r1", "no_r2": "r2", "no_r3": "r3", "no_r4": "r4", "no_gan_a": "gan_a", "no_gan_c": "gan_c",
             "no_gans": ("gan_a", "gan_c")}


def small(root: Path, runs: Path, *extra: str) -> list[str]:
    """Six batches of a tiny generator and discriminators on the toy dataset."""
    return [f"data.root={root}", f"run.root={runs}", "data.segment_seconds=0.5", "data.batch_size=4",
            "data.num_workers=1", "data.valid_clips=4", "stft.n_fft=256", "stft.win_length=256", "stft.hop_length=64",
            "net.depth=2", "net.channels=8", "net.top_channels=0", "masknet.discriminator.channels=4",
            "masknet.discriminator.layers=2", "masknet.discriminator.scales=2", "masknet.discriminator_warmup=0",
            "trainer.max_steps=6",
            "trainer.val_every_n_steps=3", "trainer.checkpoint_every_n_steps=3", "trainer.progress_bar=false",
            "trainer.precision=32-true", "trainer.log_every_n_steps=1", "eval.examples=1", "logging.wandb=false",
            *extra]


def _benchmark(name: str):
    """A script of benchmarks/ as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def masknet_run(toy_dataset, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("masknet-runs")
    proc = ok(cli("fit", CONFIG, *small(toy_dataset, runs)))
    return Path(proc.stdout.strip().splitlines()[-1])


def test_fit_logs_every_term_and_checkpoints_both_optimizers(masknet_run):
    with open(next((masknet_run / "csv").rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    logged = {k[len("train/"):] for row in rows for k, v in row.items() if k.startswith("train/") and v}
    assert logged == set(TERMS)
    ckpt = torch.load(masknet_run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    assert ckpt["global_step"] == 12  # Lightning counts both optimizers' steps: 6 batches
    assert [s["last_epoch"] for s in ckpt["lr_schedulers"]] == [6, 6]  # each schedule stepped once per batch


def test_test_writes_the_paper_table(masknet_run):
    ok(cli("test", str(masknet_run)))
    results = json.loads((masknet_run / "results.json").read_text())
    assert results["method"] == "masknet" and len(results["clips"]) == 9  # per-track values
    assert all({"sdr", "sir"} <= set(clip["speech"]) for clip in results["clips"])
    (row,) = results["paper_table"]["rows"]
    assert row == ["MaskNet", results["summary"]["speech"]["sdr"]["median"],
                   results["summary"]["speech"]["sir"]["median"]]
    assert "Table 1 layout" in (masknet_run / "results.md").read_text()
    assert results["inference"]["mask_exponent"] == 1.0


def test_test_applies_inference_overrides_to_a_trained_run(masknet_run):
    scores = {}
    for exponent in (1.0, 3.0):
        ok(cli("test", str(masknet_run), f"masknet.inference.mask_exponent={exponent}"))
        results = json.loads((masknet_run / "results.json").read_text())
        assert results["inference"]["mask_exponent"] == exponent
        scores[exponent] = [clip["speech"]["si_sdr"] for clip in results["clips"]]
    assert scores[1.0] != scores[3.0]  # the override reached the masks, not just the record


def test_inference_sweep_scores_each_setting_on_the_validation_split(masknet_run, tmp_path, capsys):
    sweep = _benchmark("masknet_inference")
    assert sweep.main([str(masknet_run), "--exponents", "1", "2", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out.split(" on valid, speech (dB):\n")[1].strip().splitlines()
    assert len(table) == 3 and [row.split("|")[2].strip() for row in table[1:]] == ["1", "2"]
    for exponent in (1, 2):
        results = json.loads((tmp_path / f"none-inst1-voc{exponent}" / "results.json").read_text())
        assert results["split"] == "valid" and len(results["clips"]) == 7  # the toy set's validation clips
        assert results["inference"]["mask_exponent"] == exponent
        assert float(table[exponent].split("|")[3]) == pytest.approx(results["summary"]["speech"]["si_sdri"]["mean"],
                                                                     abs=0.006)


def test_breakdown_groups_clips_by_their_metadata(tmp_path):
    breakdown = _benchmark("breakdown")
    info = DatasetInfo(name="groups", sample_rate=8000, stems=["speech", "noise"], observed="noise",
                       unobserved="speech")
    writer = DatasetWriter(tmp_path / "data", info, clips_per_shard=2)
    kinds = ["strings", "brass", "strings", "brass", "strings"]
    with writer.pool("test", "eval", ["mix"]) as pool:
        for i, kind in enumerate(kinds):
            pool.add(f"clip-{i}", {"mix": np.zeros(800, np.int16)}, {"source": {"ensemble": kind}})
    writer.close()
    groups = breakdown.clip_field(str(tmp_path / "data"), "test", "source.ensemble")
    assert groups == {f"clip-{i}": kind for i, kind in enumerate(kinds)}
    results = {"clips": [{"id": f"clip-{i}", "speech": {"sir": float(i), "sar": math.nan if i == 4 else 10.0 + i}}
                         for i in range(5)]}
    values = breakdown.group_values(results, groups, "speech", ["sir", "sar"])
    assert values["sir"] == {"strings": [0.0, 2.0, 4.0], "brass": [1.0, 3.0], "(all)": [0.0, 1.0, 2.0, 3.0, 4.0]}
    assert values["sar"]["strings"] == [10.0, 12.0]  # a NaN score (silent reference) is left out
    with pytest.raises(ConfigError, match=r"clip clip-0 has no metadata field 'source.tempo' \(at 'tempo' it holds "
                                          r"ensemble\)"):
        breakdown.clip_field(str(tmp_path / "data"), "test", "source.tempo")
    with pytest.raises(ConfigError, match="no speech/si_sdri per clip in results.json"):
        breakdown.group_values(results, groups, "speech", ["si_sdri"])


def test_breakdown_table_of_a_tested_run(masknet_run, capsys):
    ok(cli("test", str(masknet_run)))
    summary = json.loads((masknet_run / "results.json").read_text())["summary"]["speech"]
    assert _benchmark("breakdown").main([str(masknet_run), str(masknet_run), "--by", "source", "--metrics",
                                         "si_sdri", "sir"]) == 0
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]]
            for line in capsys.readouterr().out.splitlines() if "|" in line}
    assert rows["source"] == ["n", "R1 si_sdri", "R1 sir", "R2 si_sdri", "R2 sir"]
    assert rows["toy"] == rows["(all)"]  # the toy clips all share one source
    n, si_sdri, sir, *again = rows["(all)"]
    assert int(n) == 9 and again == [si_sdri, sir]
    assert float(si_sdri) == pytest.approx(summary["si_sdri"]["median"], abs=0.006)
    assert float(sir) == pytest.approx(summary["sir"]["median"], abs=0.006)


class StepWatcher(pl.Callback):
    """Checks at each optimizer step that the other network's weights and gradients were left alone."""

    def __init__(self):
        self.checked_batches = self.compared = 0

    @staticmethod
    def _copy(params) -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    @staticmethod
    def _grads(params) -> list[torch.Tensor | None]:
        return [None if p.grad is None else p.grad.clone() for p in params]

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.g_weights = self._copy(module.net.parameters())
        self.calls = 0

    def on_before_optimizer_step(self, trainer, module, optimizer):
        g, d = list(module.net.parameters()), [*module.d_a.parameters(), *module.d_c.parameters()]
        self.calls += 1
        if self.calls == 1:  # discriminator step: only the discriminators have fresh gradients
            assert optimizer.param_groups[0]["params"][0] is d[0]
            g_grads = self._grads(g)
            if hasattr(self, "g_grads") and g_grads[0] is not None:  # (Lightning frees all gradients to validate)
                assert all(torch.equal(a, b) for a, b in zip(self.g_grads, g_grads, strict=True))
                self.compared += 1
            self.d_grads = self._grads(d)
        else:  # generator step: the discriminator step moved no generator weight, the G pass no D gradient
            assert optimizer.param_groups[0]["params"][0] is g[0]
            assert all(torch.equal(a, b) for a, b in zip(self.g_weights, self._copy(g), strict=True))
            assert all(torch.equal(a, b) for a, b in zip(self.d_grads, self._grads(d), strict=True))
            self.d_weights, self.g_grads = self._copy(d), self._grads(g)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        d = [*module.d_a.parameters(), *module.d_c.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(self.d_weights, self._copy(d), strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(self.g_weights, self._copy(module.net.parameters()),
                                                           strict=True))
        assert self.calls == 2
        self.checked_batches += 1


def test_each_optimizer_step_updates_only_its_own_network(toy_dataset, tmp_path):
    watcher = StepWatcher()
    cfg = experiment.load(REPO / CONFIG, small(toy_dataset, tmp_path, "trainer.max_steps=4"))
    experiment.fit(cfg, callbacks=[watcher])
    assert watcher.checked_batches == 4 and watcher.compared == 2  # batches 2 and 3 (validation after 3)


class StateAtStart(pl.Callback):
    def on_train_start(self, trainer, module):
        # copies: Adam updates its state tensors in place as training goes on
        self.optimizers = copy.deepcopy([o.state_dict() for o in trainer.optimizers])
        self.schedulers = copy.deepcopy([c.scheduler.state_dict() for c in trainer.lr_scheduler_configs])


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b or (callable(a) and callable(b))  # LambdaLR keeps its lambdas out of the state


def test_resume_restores_both_optimizers_and_schedulers(toy_dataset, tmp_path):
    overrides = small(toy_dataset, tmp_path, "trainer.max_steps=4", "optim.schedule=cosine", "optim.warmup_steps=2",
                      "optim.schedule_steps=8")
    folder = experiment.fit(experiment.load(REPO / CONFIG, overrides))
    saved = torch.load(folder / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    watcher = StateAtStart()
    again = experiment.fit(experiment.load(REPO / CONFIG, [*overrides, "trainer.max_steps=6"]), callbacks=[watcher])
    assert again == folder
    assert [o["state"][0]["step"].item() for o in watcher.optimizers] == [4, 4]  # not fresh optimizers
    assert _same(watcher.optimizers, saved["optimizer_states"])
    assert _same(watcher.schedulers, saved["lr_schedulers"])
    assert [s["last_epoch"] for s in watcher.schedulers] == [4, 4]


def test_nan_in_a_loss_stops_the_run_naming_the_term(toy_dataset, tmp_path):
    proc = cli("fit", CONFIG, *small(toy_dataset, tmp_path, "optim.lr=1e30", "trainer.max_steps=50"))
    assert proc.returncode == 3, proc.stderr[-2000:]
    named = re.search(r"training stopped: loss term\(s\) \[([^\]]+)\] became NaN/inf at step \d+", proc.stderr)
    assert named, proc.stderr[-2000:]
    assert set(re.findall(r"'(\w+)'", named.group(1))) <= set(TERMS)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_is_the_demo_with_one_row_applied(name):
    demo = experiment.load(REPO / CONFIG, [])
    ablated = experiment.load(REPO / f"experiments/masknet/ablations/{name}.yaml", [])
    removed = ABLATIONS[name] if isinstance(ABLATIONS[name], tuple) else (ABLATIONS[name],)
    assert ablated.experiment == f"masknet-demo-chorales-{name.replace('_', '-')}"
    for term in removed:
        assert demo.masknet.weights[term] > 0 and ablated.masknet.weights[term] == 0
        ablated.masknet.weights[term] = demo.masknet.weights[term]
    ablated.experiment = demo.experiment
    assert OmegaConf.to_container(ablated) == OmegaConf.to_container(demo)


def _module(toy_dataset, *overrides: str) -> MaskNet:
    cfg = experiment.load(REPO / CONFIG, small(toy_dataset, Path("unused"), *overrides))
    return MaskNet(OmegaConf.to_container(cfg), experiment.dataset_summary(DatasetInfo.load(toy_dataset)))


def test_without_gans_there_are_no_discriminators(toy_dataset):
    module = _module(toy_dataset, "masknet.weights.gan_a=0", "masknet.weights.gan_c=0")
    assert module.d_a is None and module.d_c is None
    assert MaskNet.optimizer_steps_per_batch(module.cfg) == 1
    optimizers, schedulers = module.configure_optimizers()
    assert len(optimizers) == len(schedulers) == 1


def test_inference_keys_shape_the_masks(toy_dataset):
    torch.manual_seed(0)
    mix = 0.1 * torch.randn(2, 4000)
    plain = _module(toy_dataset).eval()
    sharp = _module(toy_dataset, "masknet.inference.mask_exponent=3").eval()
    sharp.load_state_dict(plain.state_dict())
    vocals = plain.stems.index("speech")
    m1, m3 = plain.masks(mix)[:, vocals], sharp.masks(mix)[:, vocals]
    assert torch.allclose(m3, m1**3, atol=1e-6) and torch.allclose(plain.masks(mix).sum(1), torch.ones_like(m1))
    fuller = _module(toy_dataset, "masknet.inference.instrumental_exponent=2.7").eval()
    fuller.load_state_dict(plain.state_dict())
    keep = plain.stems.index("noise")
    assert torch.allclose(fuller.masks(mix)[:, keep], plain.masks(mix)[:, keep] ** 2.7, atol=1e-5)
    griffin = _module(toy_dataset, "masknet.inference.phase=griffin_lim", "masknet.inference.griffin_lim_iterations=4")
    griffin.load_state_dict(plain.state_dict())
    est = griffin.eval().separate(mix)
    assert est.shape == (2, 2, 4000) and not torch.allclose(est, plain.separate(mix), atol=1e-4)
    with pytest.raises(ConfigError, match="masknet.inference.phase='mixed' is not one of 'mixture', 'griffin_lim'"):
        experiment.load(REPO / CONFIG, ["masknet.inference.phase=mixed"])
    with pytest.raises(ConfigError, match="set masknet.clip_norm instead of trainer.gradient_clip_val"):
        experiment.load(REPO / CONFIG, ["trainer.gradient_clip_val=1.0"])


def test_bilateral_filter_smooths_noise_but_keeps_edges():
    torch.manual_seed(0)
    step = torch.full((1, 32, 32), 0.2)
    step[:, :, 16:] = 0.8
    noisy = step + 0.05 * torch.randn_like(step)
    out = bilateral_filter(noisy, 5, 1.5, 0.2)
    assert (out - step).abs().mean() < 0.5 * (noisy - step).abs().mean()  # noise reduced
    assert out[:, :, 15].max() < 0.3 and out[:, :, 16].min() > 0.7  # the edge stays sharp (a blur would give 0.5)
    flat = torch.full((1, 8, 8), 0.3)
    assert torch.allclose(bilateral_filter(flat, 5, 1.5, 0.2), flat)


def test_griffin_lim_makes_magnitudes_consistent():
    stft = STFT(STFTConfig(n_fft=256, win_length=256, hop_length=64))
    torch.manual_seed(0)
    t = torch.arange(8000) / 8000
    wave = torch.sin(2 * math.pi * 440 * t * (1 + t))[None]
    target = stft(wave).abs()
    random_phase = torch.polar(torch.ones_like(target), 2 * math.pi * torch.rand_like(target))

    def error(w):
        return ((stft(w).abs() - target).norm() / target.norm()).item()

    assert error(stft.griffin_lim(target, random_phase, 8000, 30)) < 0.5 * error(stft.griffin_lim(target, random_phase,
                                                                                                 8000, 0))


@pytest.mark.slow
def test_ddp_two_processes(toy_dataset, tmp_path):
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    proc = ok(cli("fit", CONFIG, *small(toy_dataset, tmp_path, *ddp)))
    folder = Path(proc.stdout.strip().splitlines()[-1])
    ckpt = torch.load(folder / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert len(ckpt["optimizer_states"]) == 2 and ckpt["global_step"] == 12
    assert {"d_a.scales.0.0.weight", "d_c.scales.0.0.weight"} <= set(ckpt["state_dict"])
    ok(cli("test", str(folder), *ddp))
    results = json.loads((folder / "results.json").read_text())
    assert len(results["clips"]) == 9 and results["paper_table"]["rows"][0][0] == "MaskNet"


def test_discriminator_warmup_comes_before_the_generators_steps(toy_dataset, tmp_path):
    """Two warm-up batches train only the discriminators; trainer.max_steps still counts generator steps."""
    cfg = experiment.load(REPO / CONFIG, small(toy_dataset, tmp_path, "trainer.max_steps=3",
                                               "masknet.discriminator_warmup=2", "masknet.discriminator_lr_scale=4"))
    folder = experiment.fit(cfg)
    ckpt = torch.load(folder / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 + 2 * 3
    g_state, d_state = (o["state"] for o in ckpt["optimizer_states"])
    assert {float(s["step"]) for s in g_state.values()} == {3.0}  # Adam's own count of its updates
    assert {float(s["step"]) for s in d_state.values()} == {5.0}
    assert [s["last_epoch"] for s in ckpt["lr_schedulers"]] == [3, 5]  # each schedule steps with its optimizer
    g_lr, d_lr = (o["param_groups"][0]["initial_lr"] for o in ckpt["optimizer_states"])
    assert d_lr == pytest.approx(4 * g_lr)
    with open(next((folder / "csv").rglob("metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_d")]
    assert [bool(r["train/loss_g"]) for r in rows] == [False, False, True, True, True]


def test_synthetic_rampup_raises_r3_and_r4_from_zero_over_the_generators_steps(toy_dataset, tmp_path):
    cfg = experiment.load(REPO / CONFIG, small(toy_dataset, tmp_path, "trainer.max_steps=4",
                                               "masknet.discriminator_warmup=2", "masknet.synthetic_rampup=2"))
    with open(next((experiment.fit(cfg) / "csv").rglob("metrics.csv"))) as f:
        rows = [{k: float(v) for k, v in r.items() if k.startswith("train/") and v}
                for r in csv.DictReader(f) if r.get("train/loss_g")]
    w = cfg.masknet.weights
    shares = []
    for r in rows:
        rest = sum(w[k] * r[f"train/{k}"] for k in ("r1", "r2", "gan_a", "gan_c"))
        shares.append((r["train/loss_g"] - rest) / (w.r3 * r["train/r3"] + w.r4 * r["train/r4"]))
    assert shares == pytest.approx([0.0, 0.5, 1.0, 1.0], abs=1e-4)  # generator steps 0..3 of a 2-step ramp


def test_normalized_discriminator_input_ignores_the_level(toy_dataset):
    torch.manual_seed(0)
    spec = torch.randn(2, 65, 20, dtype=torch.complex64)
    absolute = _module(toy_dataset, "masknet.discriminator_level=absolute")
    normalized = _module(toy_dataset, "masknet.discriminator_level=normalized")
    assert torch.allclose(normalized.d_input(3 * spec), normalized.d_input(spec), atol=1e-5)
    assert not torch.allclose(absolute.d_input(3 * spec), absolute.d_input(spec), atol=1e-2)
    with pytest.raises(ConfigError, match="masknet.discriminator_level='loud' is not one of"):
        experiment.load(REPO / CONFIG, ["masknet.discriminator_level=loud"])


def test_frequency_input_tells_the_discriminator_where_a_patch_lies(toy_dataset):
    torch.manual_seed(0)
    d = _module(toy_dataset, "masknet.discriminator.frequency_input=true").d_c
    assert d.scales[0][0].in_channels == 2
    flat = torch.ones(1, 64, 32)  # the same content in every band: only the frequency channel tells bands apart
    scores = d(flat)[0][0, 0]
    assert not torch.allclose(scores[0], scores[-1])


@pytest.mark.parametrize("fixed", [False, True])
def test_fixed_synthetic_targets_stop_r3_and_r4_at_the_vocal_estimate(toy_dataset, fixed):
    module = _module(toy_dataset, f"masknet.fixed_synthetic_targets={str(fixed).lower()}")
    torch.manual_seed(0)
    y, c = torch.randn(2, 2, 129, 16, dtype=torch.complex64)  # n_fft 256: 129 bins
    g_y = module.g(y)
    v_hat = (y - g_y).detach().requires_grad_()  # a leaf, so that its gradient can be read
    losses = module.generator_losses(c, g_y, v_hat, v_hat + c)
    for term in ("r3", "r4", "gan_a"):
        (grad,) = torch.autograd.grad(losses[term], v_hat, retain_graph=True, allow_unused=True)
        reaches = grad is not None and grad.abs().sum() > 0
        assert reaches == (term == "gan_a" or not fixed), term  # GAN_A trains g through ȳ either way
    # and g itself still learns from R4: through its pass over ȳ
    grads = torch.autograd.grad(losses["r4"], list(module.net.parameters()), retain_graph=True, allow_unused=True)
    assert any(grad is not None and grad.abs().sum() > 0 for grad in grads)


def test_r4_on_compressed_magnitudes_is_r3_where_they_add_up_as_in_the_authors_code(toy_dataset):
    # the authors' synthetic mixtures are sums of compressed magnitudes; for such a ȳ their R4 equals their R3
    torch.manual_seed(0)
    v_hat, c = torch.randn(2, 2, 129, 16, dtype=torch.complex64)
    p = 0.3
    y_bar = (v_hat.abs() ** p + c.abs() ** p) ** (1 / p) * torch.exp(1j * torch.rand(2, 129, 16) * 6.28)
    modules = {domain: _module(toy_dataset, f"masknet.r4_domain={domain}", f"masknet.compression={p}")
               for domain in ("spectrum", "compressed")}
    modules["compressed"].load_state_dict(modules["spectrum"].state_dict())
    by_domain = {domain: m.generator_losses(c, m.g(y_bar), v_hat, y_bar) for domain, m in modules.items()}
    compressed, spectrum = by_domain["compressed"], by_domain["spectrum"]
    assert torch.allclose(compressed["r3"], spectrum["r3"])  # the same g on the same inputs
    assert torch.allclose(compressed["r4"], compressed["r3"], rtol=1e-4)
    assert not torch.allclose(spectrum["r4"], spectrum["r3"], rtol=1e-2)
    with pytest.raises(ConfigError, match="masknet.r4_domain='linear' is not one of 'spectrum', 'compressed'"):
        experiment.load(REPO / CONFIG, ["masknet.r4_domain=linear"])
