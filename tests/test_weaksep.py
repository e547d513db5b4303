"""The weak-label classifier and WeakSep end to end on a small synthetic event dataset (tests/weak_fakes.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli
from omegaconf import OmegaConf
from test_runs import ok
from weak_fakes import CLASSES, build_weak_dataset

from lightning_sep import experiment
from lightning_sep.config import ConfigError
from lightning_sep.data.datamodule import SeparationDataModule
from lightning_sep.data.shards import DatasetInfo
from lightning_sep.data.streams import DataConfig, PoolSpec
from lightning_sep.methods.assessor import classifier_weights
from lightning_sep.methods.supervised import Supervised
from lightning_sep.methods.weaksep import WeakSep

CLASSIFIER = "experiments/weaksep/classifier_demo_urban.yaml"
CLIP, FRAME = "experiments/weaksep/demo_urban_clip.yaml", "experiments/weaksep/demo_urban_frame.yaml"
BOUND = "experiments/supervised/demo_urban.yaml"


def small(root: Path, runs: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"run.root={runs}", "data.segment_seconds=1.0", "data.batch_size=4",
            "data.num_workers=1", "stft.n_fft=256", "stft.win_length=256", "stft.hop_length=64",
            "trainer.checkpoint_every_n_steps=10", "trainer.progress_bar=false", "trainer.precision=32-true",
            "trainer.log_every_n_steps=1", "eval.examples=1", "logging.wandb=false", *extra]


def separator(root: Path, runs: Path, *extra: str) -> list[str]:
    return small(root, runs, "net.depth=2", "net.channels=8", "net.top_channels=0", "trainer.max_steps=6",
                 "trainer.val_every_n_steps=3", *extra)


def frozen(classifier_run: Path) -> str:
    """The classifier trained here (its config differs from classifier_demo_urban.yaml's, so it is named directly)."""
    return f"weaksep.classifier_checkpoint={classifier_run / 'checkpoints/last.ckpt'}"


@pytest.fixture(scope="module")
def weak_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weak") / "toy-events"
    build_weak_dataset(root)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weak-runs")


@pytest.fixture(scope="module")
def classifier_run(weak_dataset, runs) -> Path:
    proc = ok(cli("fit", CLASSIFIER, *small(weak_dataset, runs, "classifier.channels=8", "classifier.n_mels=32",
                                             "classifier.blocks=2", "trainer.max_steps=150",
                                             "trainer.val_every_n_steps=75", "optim.lr=0.003")))
    return Path(proc.stdout.strip().splitlines()[-1])


def test_training_batches_carry_labels_and_frame_activity(weak_dataset):
    data = SeparationDataModule(DataConfig(root=str(weak_dataset), segment_seconds=1.0, batch_size=4, num_workers=0),
                                {"mixtures": PoolSpec("train", "mixtures", ["mix"])},
                                forbidden=(*CLASSES, "background"))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))["mixtures"]
    assert set(batch) == {"mix", "labels", "activity"}  # no isolated stem ever reaches a WeakSep batch
    assert batch["activity"].shape == (4, 3, 100)  # 10 ms frames of the 1 s crop
    # a class is active somewhere in the crop exactly when the clip's labels name it (crop = whole clip)
    assert torch.equal(batch["activity"].amax(-1), batch["labels"])


def test_classifier_reports_map_on_the_test_split(classifier_run):
    ok(cli("test", str(classifier_run)))
    results = json.loads((classifier_run / "results.json").read_text())
    c = results["classifier"]
    assert set(c["per_class"]) == set(CLASSES) and len(results["clips"]) == 9
    assert c["map"] == pytest.approx(sum(v["ap"] for v in c["per_class"].values()) / 3)
    assert c["map"] > 0.8, c  # three easy synthetic classes
    assert "Clip-level tagging: mAP" in (classifier_run / "results.md").read_text()


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("config", [CLIP, FRAME])
def test_weaksep_trains_with_the_classifier_frozen(weak_dataset, runs, classifier_run, config):
    proc = ok(cli("fit", config, *separator(weak_dataset, runs, frozen(classifier_run))))
    folder = Path(proc.stdout.strip().splitlines()[-1])
    assessor = {k[len("assessor."):]: v for k, v in _state(folder / "checkpoints/last.ckpt").items()
                if k.startswith("assessor.")}
    trained = classifier_weights(_state(classifier_run / "checkpoints/last.ckpt"))
    assert assessor.keys() == trained.keys() and any("running_mean" in k for k in assessor)
    assert all(torch.equal(assessor[k], trained[k]) for k in trained)  # weights and batch-norm statistics
    metrics = (next((folder / "csv").rglob("metrics.csv"))).read_text().splitlines()[0]
    assert "train/classification" in metrics and "train/silence" in metrics
    ok(cli("test", str(folder)))
    results = json.loads((folder / "results.json").read_text())
    background = {"background"} if experiment.load(REPO / config, []).weaksep.separate_unlabelled else set()
    assert set(results["summary"]) == {*CLASSES, *background} and results["by_events"]
    assert results["labels"] == ("clip" if config == CLIP else "frame")


def test_outputs_sum_to_the_mixture(weak_dataset, runs, classifier_run):
    cfg = experiment.load(REPO / CLIP, separator(weak_dataset, runs, frozen(classifier_run)))
    module = WeakSep(OmegaConf.to_container(cfg), experiment.dataset_summary(DatasetInfo.load(weak_dataset))).eval()
    torch.manual_seed(0)
    mix = 0.1 * torch.randn(2, 8000)
    estimates = module.separate(mix)
    assert estimates.shape == (2, 3, 8000)
    assert ((estimates.sum(1) - mix).norm() / mix.norm()).item() < 1e-4


def test_unlabelled_stem_gets_its_own_output_heard_as_no_class(weak_dataset, runs, classifier_run):
    overrides = separator(weak_dataset, runs, frozen(classifier_run), "weaksep.separate_unlabelled=true")
    module = WeakSep(OmegaConf.to_container(experiment.load(REPO / CLIP, overrides)),
                     experiment.dataset_summary(DatasetInfo.load(weak_dataset))).eval()
    assert module.stems == [*CLASSES, "background"]
    torch.manual_seed(0)
    mix = 0.1 * torch.randn(2, 8000)
    estimates = module.separate(mix)
    assert estimates.shape == (2, 4, 8000)
    assert ((estimates.sum(1) - mix).norm() / mix.norm()).item() < 1e-4
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    losses = module.training_losses({"mixtures": {"mix": mix, "labels": labels, "activity": labels[..., None]}})
    spec = module.front_end(mix)
    background = module.masks(mix, spec)[:, 3] * spec.abs()  # (2, F, N)
    frames = module.assessor(background)[1]  # (mixture, class, frame)
    verdict = (frames**2).sum(-1) / frames.sum(-1)  # the classifier's linear-softmax pooling
    expected = torch.nn.functional.binary_cross_entropy(verdict, torch.zeros_like(verdict))
    torch.testing.assert_close(losses["unlabelled"], expected, rtol=1e-4, atol=1e-6)
    terms = sum(losses[k] for k in ("classification", "silence", "unlabelled"))
    torch.testing.assert_close(losses["loss"], terms)


@pytest.mark.parametrize("labels", ["clip", "frame"])
def test_silence_is_the_share_of_the_mixture_sent_to_absent_classes(weak_dataset, runs, classifier_run, labels):
    overrides = separator(weak_dataset, runs, frozen(classifier_run), f"weaksep.labels={labels}")
    cfg = experiment.load(REPO / CLIP, overrides)
    module = WeakSep(OmegaConf.to_container(cfg), experiment.dataset_summary(DatasetInfo.load(weak_dataset))).eval()
    torch.manual_seed(0)
    mix = 0.1 * torch.randn(2, 8000)
    activity = torch.zeros(2, 3, 100)
    activity[0, 0] = 1  # clip 0: class 0 throughout
    activity[1, 1, :50] = 1  # clip 1: class 1 in its first half, class 2 in its second
    activity[1, 2, 50:] = 1
    batch = {"mixtures": {"mix": mix, "labels": activity.amax(-1), "activity": activity}}
    losses = module.training_losses(batch)
    spec = module.front_end(mix)
    outputs = module.masks(mix, spec) * spec.abs().unsqueeze(1)  # (2, 3, F, N)
    if labels == "clip":  # absent: classes 1, 2 of clip 0, class 0 of clip 1; every clip has an absent class
        expected = (outputs[0, 1:].sum() + outputs[1, 0].sum()) / spec.abs().sum()
    else:
        label_of_frame = (torch.arange(spec.shape[-1]) * module.cfg.stft.hop_length * 100 // 8000).clamp(max=99)
        absent = 1 - activity[..., label_of_frame]  # (2, 3, N): 10 ms labels at each STFT frame's centre
        expected = (outputs * absent[:, :, None]).sum() / (spec.abs() * absent.amax(1)[:, None]).sum()
    torch.testing.assert_close(losses["silence"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("verdict", ["pooled", "frames"])
def test_frame_labels_ask_the_classifier_where_each_class_sounds(weak_dataset, runs, classifier_run, verdict):
    overrides = separator(weak_dataset, runs, frozen(classifier_run), "weaksep.labels=frame",
                          f"weaksep.frame_verdict={verdict}")
    module = WeakSep(OmegaConf.to_container(experiment.load(REPO / CLIP, overrides)),
                     experiment.dataset_summary(DatasetInfo.load(weak_dataset))).eval()
    torch.manual_seed(0)
    mix = 0.1 * torch.randn(1, 8000)
    activity = torch.zeros(1, 3, 100)
    activity[0, 1, :50] = 1  # class 1 in the first half, class 2 in the second; class 0 never
    activity[0, 2, 50:] = 1
    losses = module.training_losses({"mixtures": {"mix": mix, "labels": activity.amax(-1), "activity": activity}})
    spec = module.front_end(mix)
    outputs = module.masks(mix, spec) * spec.abs().unsqueeze(1)
    frames = module.assessor(outputs[0])[1]  # (output, class, frame)
    label_of_frame = (torch.arange(spec.shape[-1]) * module.cfg.stft.hop_length * 100 // 8000).clamp(max=99)
    active = activity[0][:, label_of_frame].bool()  # (class, frame)
    wrong = []
    for k in (1, 2):
        p = frames[k][:, active[k]]  # output k, every class, in the frames where class k sounds
        if verdict == "pooled":  # the classifier's linear-softmax pooling over just those frames
            p = (p**2).sum(-1, keepdim=True) / p.sum(-1, keepdim=True)
        target = torch.zeros_like(p)
        target[k] = 1
        wrong.append(torch.nn.functional.binary_cross_entropy(p, target, reduction="none").mean(0))
    torch.testing.assert_close(losses["classification"], torch.cat(wrong).mean(), rtol=1e-4, atol=1e-6)


def test_bound_trains_with_the_frozen_classifier_as_a_second_term(weak_dataset, runs, classifier_run):
    checkpoint = f"supervised.classifier_checkpoint={classifier_run / 'checkpoints/last.ckpt'}"
    proc = ok(cli("fit", BOUND, *separator(weak_dataset, runs, checkpoint, "supervised.assessor_weight=2.0")))
    folder = Path(proc.stdout.strip().splitlines()[-1])
    state = _state(folder / "checkpoints/last.ckpt")
    trained = classifier_weights(_state(classifier_run / "checkpoints/last.ckpt"))
    assert all(torch.equal(state[f"assessor.{k}"], v) for k, v in trained.items())
    header = (next((folder / "csv").rglob("metrics.csv"))).read_text().splitlines()[0]
    assert "train/classification" in header and "train/neg_snr" in header
    ok(cli("test", str(folder)))  # the test run rebuilds the module, assessor included, from the stored config
    assert set(json.loads((folder / "results.json").read_text())["summary"]) == {*CLASSES, "background"}


def test_bound_assessor_term_judges_the_sounding_classes_outputs(weak_dataset, runs, classifier_run):
    checkpoint = f"supervised.classifier_checkpoint={classifier_run / 'checkpoints/last.ckpt'}"
    cfg = experiment.load(REPO / BOUND, separator(weak_dataset, runs, checkpoint, "supervised.assessor_weight=2.0",
                                                  "supervised.remix=false"))
    module = Supervised(OmegaConf.to_container(cfg), experiment.dataset_summary(DatasetInfo.load(weak_dataset)))
    module.eval()
    torch.manual_seed(0)
    sources = torch.zeros(2, 4, 8000)  # three classes and the background
    sources[0, 1], sources[0, 3] = 0.1 * torch.randn(8000), 0.01 * torch.randn(8000)  # clip 0: class 1
    sources[1, 0], sources[1, 2] = 0.1 * torch.randn(8000), 0.1 * torch.randn(8000)  # clip 1: classes 0 and 2
    batch = {"isolated": {s: sources[:, i] for i, s in enumerate(module.stems)}}
    losses = module.training_losses(batch)
    mix = sources.sum(1)
    spec = module.front_end(mix)
    outputs = module.masks(mix, spec)[:, :3] * spec.abs().unsqueeze(1)
    wrong = []
    for b, k in ((0, 1), (1, 0), (1, 2)):
        p = module.assessor(outputs[b, k : k + 1])[0][0]  # the clip probabilities of output k alone
        wrong.append(torch.nn.functional.binary_cross_entropy(p, torch.eye(3)[k]))
    torch.testing.assert_close(losses["classification"], torch.stack(wrong).mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss"], losses["neg_snr"] + 2.0 * losses["classification"])


def test_missing_classifier_is_a_clear_error(weak_dataset, tmp_path):
    proc = cli("fit", CLIP, *separator(weak_dataset, tmp_path))
    assert proc.returncode == 2
    assert "no such file; train the classifier run first" in proc.stderr
    assert "lightning-sep fit experiments/weaksep/classifier_demo_urban.yaml" in proc.stderr
    # the error names the classifier config the run asked for: the frame-level run has its own
    proc = cli("fit", FRAME, *separator(weak_dataset, tmp_path))
    assert proc.returncode == 2
    assert "lightning-sep fit experiments/weaksep/classifier_demo_urban_frame.yaml" in proc.stderr


def test_unknown_label_ends_with_a_clear_error(tmp_path):
    root = tmp_path / "bad-labels"
    build_weak_dataset(root, bad_label="helicopter")
    proc = cli("fit", CLASSIFIER, *small(root, tmp_path / "runs", "classifier.channels=4", "classifier.blocks=1",
                                         "trainer.max_steps=20", "data.num_workers=0"))
    assert proc.returncode != 0
    assert "label 'helicopter' is not among the dataset's classes ['tone', 'noise', 'click']" in proc.stderr
    assert "train/mixtures" in proc.stderr


def test_classifier_from_another_dataset_is_refused(weak_dataset, classifier_run, tmp_path):
    other = tmp_path / "other"
    build_weak_dataset(other, seed=1)
    info = json.loads((other / "dataset.json").read_text())
    info["classes"], info["stems"] = ["tone", "noise", "hum"], ["tone", "noise", "hum", "background"]
    (other / "dataset.json").write_text(json.dumps(info))
    cfg = experiment.load(REPO / CLIP, separator(other, tmp_path, frozen(classifier_run)))
    with pytest.raises(ConfigError, match=r"the classifier knows classes \['tone', 'noise', 'click'\]"):
        WeakSep(OmegaConf.to_container(cfg), experiment.dataset_summary(DatasetInfo.load(other)))


@pytest.mark.slow
def test_ddp_two_processes(weak_dataset, runs, classifier_run, tmp_path):
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    out = tmp_path / "ddp"
    proc = ok(cli("fit", FRAME, *separator(weak_dataset, out, frozen(classifier_run), *ddp)))
    folder = Path(proc.stdout.strip().splitlines()[-1])
    ok(cli("test", str(folder), *ddp))
    results = json.loads((folder / "results.json").read_text())
    assert len(results["clips"]) == 9 and set(results["summary"]) == set(CLASSES)


def test_spec_augment_masks_whole_bands_and_spans_in_training_only():
    from lightning_sep.nets.classifier import ClassifierConfig, SoundEventClassifier

    torch.manual_seed(0)
    net = SoundEventClassifier(3, ClassifierConfig(n_mels=32, channels=4, blocks=1, freq_masks=2, time_masks=2,
                                                   mask_bands=6, mask_frames=10), 8000, 256)
    x = torch.randn(16, 1, 32, 50) + 5.0  # nothing is zero before masking
    zeroed = net.spec_augment(x) == 0
    rows, cols = zeroed.all(dim=3)[:, 0], zeroed.all(dim=2)[:, 0]  # whole mel bands, whole frames
    assert torch.equal(zeroed[:, 0], rows[:, :, None] | cols[:, None, :])  # only whole bands and spans
    assert 0 < rows.sum(1).max() <= 12 and 0 < cols.sum(1).max() <= 20 and rows.any(1).sum() > 8
    magnitude = torch.rand(2, 129, 40)
    net.eval()
    assert torch.equal(net.frame_logits(magnitude), net.frame_logits(magnitude))  # no masking outside training


def test_shift_and_tilt_move_each_example_within_its_bounds():
    from lightning_sep.nets.classifier import ClassifierConfig, SoundEventClassifier

    torch.manual_seed(0)
    ramp = torch.arange(32.0).view(1, 32, 1).expand(64, 32, 5)  # band index as the value: a shift shows as itself
    shifted = SoundEventClassifier(3, ClassifierConfig(n_mels=32, channels=4, blocks=1, shift_bands=3), 8000,
                                   256).shift_and_tilt(ramp)
    moved = shifted[:, 16, 0] - 16  # a middle band, away from the repeated edges
    assert set(moved.tolist()) == {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}  # every shift in range, none beyond
    torch.testing.assert_close(shifted[:, 10:22] - ramp[:, 10:22], moved.view(-1, 1, 1).expand(64, 12, 5))
    tilted = SoundEventClassifier(3, ClassifierConfig(n_mels=32, channels=4, blocks=1, tilt_db=6.0), 8000,
                                  256).shift_and_tilt(torch.zeros(64, 32, 5))
    top_db = tilted[:, -1, 0] * 10 / math.log(10)
    assert top_db.abs().max() <= 6.0 + 1e-4 and top_db.abs().max() > 4.0
    torch.testing.assert_close(tilted[:, 0], -tilted[:, -1])  # a slope through the middle band
