"""Experiment configs: one YAML per experiment, checked against a dataclass schema, overridable by ``key=value``.

A key the schema does not know is an error that names it, says where it came from and lists the valid keys
(with a close match suggested): a mistyped hyperparameter must never be silently ignored. The run's identity
(its folder name) is a hash of the config without the operational keys (paths, devices, strategy, logging),
so the same experiment lands in the same folder however and wherever it is launched.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .audio import STFTConfig
from .data.streams import WORKER_STARTS, DataConfig
from .nets.unet import UNetConfig


class ConfigError(ValueError):
    """A config that cannot be used as written; the message says which key and how to fix it."""


@dataclass
class TrainerConfig:
    """Passed to ``pytorch_lightning.Trainer`` (the operational ones do not change the run's identity)."""

    max_steps: int = 2000  # optimizer steps in all
    accelerator: str = "auto"  # cpu, gpu, auto
    devices: Any = 1  # devices per node: an int, a list of ids, or "auto"
    strategy: str = "auto"  # auto, ddp, ddp_spawn, ... (ddp runs on CPU with gloo too)
    num_nodes: int = 1  # nodes (SLURM / torchrun set the rest)
    precision: str = "32-true"  # 32-true, bf16-mixed (the STFT and metrics stay in fp32 either way)
    val_every_n_steps: int = 500  # validate every N training steps
    log_every_n_steps: int = 25  # how often step metrics are logged
    checkpoint_every_n_steps: int = 100  # how often checkpoints/last.ckpt is rewritten
    gradient_clip_val: float | None = None  # clip gradient norm to this value (None: no clipping)
    deterministic: bool = False  # torch deterministic algorithms (slower on GPU)
    progress_bar: bool = True  # show a progress bar (off in CI logs makes them shorter)


@dataclass
class OptimConfig:
    """Adam optimizer and its learning-rate schedule."""

    lr: float = 1e-3  # learning rate (the peak, for the cosine schedule)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's moment decay rates
    weight_decay: float = 0.0  # L2 penalty (Adam's weight_decay)
    schedule: str = "step"  # step: x decay_factor every decay_every_steps; cosine: warm-up, then down to final_lr_ratio
    decay_every_steps: int | None = None  # step schedule: multiply lr by decay_factor every N steps (None: constant lr)
    decay_factor: float = 0.5  # step schedule: the factor of that decay
    warmup_steps: int = 0  # cosine schedule: linear warm-up from 0 over this many steps
    schedule_steps: int | None = None  # cosine schedule: its length (None: trainer.max_steps, or one outer
    #                                    iteration for methods that re-create their optimizer per iteration)
    final_lr_ratio: float = 0.01  # cosine schedule: lr at the end, relative to lr
    ema_decay: float | None = None  # evaluate an exponential moving average of the weights (e.g. 0.999; None: off)


@dataclass
class EvalConfig:
    """How `lightning-sep test` scores separated clips."""

    bss: bool = True  # also compute SDR/SIR/SAR (BSS Eval v4 as museval defines it; our exact, faster solver)
    framewise: bool = False  # BSS Eval framewise (museval-style windows) instead of whole clips
    window_s: float = 1.0  # framewise window in seconds
    hop_s: float = 1.0  # framewise hop in seconds
    clip_aggregation: str = "mean"  # how summary rows aggregate clips: mean (median is always reported too)
    examples: int = 3  # separated examples (audio + spectrogram PNG) written per validation/test


@dataclass
class LoggingConfig:
    """Loggers: CSV always; Weights & Biases when enabled (offline when no credentials are found)."""

    wandb: bool = True  # log to Weights & Biases too
    project: str = "lightning_sep"  # W&B project
    entity: str | None = None  # W&B entity (team); None: your default
    mode: str | None = None  # online, offline or disabled; None: WANDB_MODE, else online if logged in, else offline
    tags: list[str] = field(default_factory=list)  # W&B tags of the run


@dataclass
class RunConfig:
    """Where runs live and how a run is resumed."""

    root: str = "runs"  # run folders go to ROOT/<experiment>/<run-id>
    id: str | None = None  # explicit run id (default: config hash, or the SLURM job id)
    resume: bool = True  # resume from the run's last.ckpt if it exists; false starts over in a new run id


@dataclass
class ExperimentConfig:
    """Settings shared by every method; a method adds its own section (e.g. ``nes``)."""

    experiment: str = "???"  # experiment name: the run folder is runs/<experiment>/<run-id>
    method: str = "???"  # supervised, nes, masknet, weaksep, cosep
    seed: int = 0  # seeds Python, NumPy, torch and the loader workers (per rank)
    data: DataConfig = field(default_factory=DataConfig)
    stft: STFTConfig = field(default_factory=STFTConfig)
    net: UNetConfig = field(default_factory=UNetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run: RunConfig = field(default_factory=RunConfig)


# keys that say how and where a run executes, not what it computes; max_steps is the budget: raising it
# continues the same run (schedules count steps, so 2000 steps then 2000 more equal a 4000-step run)
OPERATIONAL = {
    "trainer.max_steps", "data.root", "data.num_workers", "data.worker_start", "data.valid_clips",
    "trainer.accelerator", "trainer.devices", "trainer.strategy", "trainer.num_nodes", "trainer.progress_bar",
    "trainer.checkpoint_every_n_steps", "trainer.log_every_n_steps", "eval", "logging", "run",
}


def parse_overrides(args: list[str]) -> list[str]:
    """``key=value`` and ``--key=value`` (the form W&B sweep agents pass) → OmegaConf dotlist."""
    out = []
    for arg in args:
        item = arg[2:] if arg.startswith("--") else arg
        if "=" not in item:
            raise ConfigError(f"override {arg!r} is not of the form key=value")
        out.append(item)
    return out


def _check_keys(schema: Any, given: Any, where: str, prefix: str = "") -> None:
    """Every key in ``given`` must exist in the schema dataclass; say which one does not and what would."""
    if not dataclasses.is_dataclass(schema) or not isinstance(given, dict):
        return
    valid = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in given.items():
        path = f"{prefix}{key}"
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown config key {path!r} in {where}{hint}; valid keys"
                f"{' under ' + repr(prefix[:-1]) if prefix else ''}: {', '.join(sorted(valid))}"
            )
        sub = valid[key].default_factory() if valid[key].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            _check_keys(sub, value, where, f"{path}.")


def load_config(path: str | Path, overrides: list[str], schemas: dict[str, type]) -> DictConfig:
    """Read an experiment YAML, apply overrides, check it against its method's schema.

    ``schemas`` maps method name → config dataclass (the method's ``Config``).
    """
    path = Path(path)
    layers = _read_layers(path)
    try:
        from_cli = OmegaConf.from_dotlist(parse_overrides(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {e}") from e
    method = from_cli.get("method", next((c["method"] for _, c in reversed(layers) if "method" in c), None))
    if method not in schemas:
        raise ConfigError(f"{path}: method {method!r} is not one of {sorted(schemas)}")
    schema = schemas[method]
    for where, layer in layers:
        _check_keys(schema(), OmegaConf.to_container(layer), str(where))
    _check_keys(schema(), OmegaConf.to_container(from_cli), "the command-line overrides")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), *(layer for _, layer in layers), from_cli)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {e}".replace("\n", "; ")) from e
    if missing:
        raise ConfigError(f"{path}: these keys need a value: {', '.join(missing)} (set them in the YAML or key=value)")
    if cfg.data.worker_start not in WORKER_STARTS:
        raise ConfigError(f"{path}: data.worker_start is {cfg.data.worker_start!r}; use one of {list(WORKER_STARTS)}")
    return cfg


def _read_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """The YAML at ``path`` and, first, the configs it builds on: a top-level ``defaults_from: OTHER.yaml``
    (relative to the file) reads OTHER first and lays this file over it (how an ablation states only its change)."""
    if not path.is_file():
        where = f" (defaults_from of {chain[-1]})" if chain else ""
        raise ConfigError(f"{path}: no such config file{where} "
                          "(experiments live in experiments/<method>/<dataset>.yaml)")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: defaults_from loops back to itself: {' -> '.join(map(str, chain))}")
    try:
        layer = OmegaConf.load(path)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {e}") from e
    base = layer.pop("defaults_from", None)
    below = _read_layers(path.parent / str(base), (*chain, path.resolve())) if base is not None else []
    return [*below, (path, layer)]


def config_from_dict(raw: dict, schemas: dict[str, type]) -> DictConfig:
    """Rebuild a checked config from a plain dict (a run's config.yaml, a checkpoint's hyperparameters)."""
    method = raw.get("method")
    if method not in schemas:
        raise ConfigError(f"method {method!r} is not one of {sorted(schemas)}")
    _check_keys(schemas[method](), raw, "the stored config")
    return OmegaConf.merge(OmegaConf.structured(schemas[method]), raw)


def identity(cfg: DictConfig) -> str:
    """Short hash of what the run computes (operational keys left out)."""
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    kept = {k: v for k, v in flat.items() if not any(k == op or k.startswith(op + ".") for op in OPERATIONAL)}
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
