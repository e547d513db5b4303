"""``lightning-sep``: prepare datasets, fit and test experiments, separate your own audio, run the demo.

Every experiment is one YAML file; any value can be overridden as ``key=value`` or ``--key=value``.
Errors a user can fix (a mistyped key, a missing dataset, a broken shard, a NaN loss) end with one clear
message and exit code 2 (or 3 for a training failure), not a traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

EXIT_USAGE, EXIT_TRAINING, EXIT_SIGTERM = 2, 3, 143


def _experiments_dir() -> Path:
    """experiments/ of this checkout (or of the current directory, e.g. in the Docker image)."""
    for candidate in (Path.cwd() / "experiments", Path(__file__).resolve().parent.parent / "experiments"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no experiments/ folder next to lightning_sep or in the current directory")


# ----------------------------------------------------------------------------- prepare


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.recipes import get_recipe, options_from

    recipe = get_recipe(args.recipe)
    options = options_from(recipe, args.overrides, seed=args.seed)
    start = time.time()
    info = recipe.build(Path(args.out), options, progress=not args.no_progress)
    print(f"built {info.name} into {args.out} in {time.time() - start:.0f} s")
    for split, pools in info.splits.items():
        for pool, p in pools.items():
            print(f"  {split}/{pool}: {p.clips} clips, {p.seconds / 60:.1f} min, stems {p.members}")
    return 0


# ----------------------------------------------------------------------------- fit


def cmd_fit(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from .experiment import fit, load

    cfg = load(args.config, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    folder = fit(cfg)
    from .runs import is_rank_zero

    if is_rank_zero():
        print(folder)
    return 0


# ----------------------------------------------------------------------------- test


def cmd_test(args: argparse.Namespace) -> int:
    from .experiment import load, run_config, test
    from .results import table
    from .runs import is_rank_zero

    target = Path(args.target)
    if target.is_dir():
        cfg = run_config(target, args.overrides)
        folder = target
    else:
        from .runs import resolve_run_dir

        cfg = load(str(target), args.overrides)
        folder = resolve_run_dir(cfg)
    results = test(cfg, folder, Path(args.ckpt) if args.ckpt else None)
    if is_rank_zero():
        print(table(results))
        print(f"results: {folder / 'results.json'}, {folder / 'results.md'}")
    return 0


# ----------------------------------------------------------------------------- separate


def cmd_separate(args: argparse.Namespace) -> int:
    from .separate import separate_files

    for path in separate_files(Path(args.checkpoint), [Path(a) for a in args.audio], Path(args.out),
                               chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
                               device=args.device):
        print(path)
    return 0


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.data) if args.data else None, Path(args.runs), args.overrides,
                    experiments=_experiments_dir(), suite=args.suite)


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-sep",
        description="Separate sounds that were never recorded alone: NES, MaskNet, WeakSep, CoSep and a "
        "supervised upper bound, on WebDataset shards, with PyTorch Lightning.",
        epilog="Overrides: any config value as key=value or --key=value, e.g. trainer.max_steps=500 "
        "--data.batch_size=8. Run `lightning-sep COMMAND --help` for each command.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .data.recipes import RECIPES

    pr = sub.add_parser("prepare", help="build a dataset from a recipe into a folder of shards",
                        description="Build a prepared dataset (dataset.json + tar shards) from a recipe.",
                        epilog="Each recipe's options, their defaults and meaning: "
                        "`python -m lightning_sep.data.recipes RECIPE --options`; data/README.md describes them.")
    pr.add_argument("recipe", help=f"recipe name: {', '.join(RECIPES)}")
    pr.add_argument("--out", required=True, help="output folder (e.g. data/demo-speech-noise)")
    pr.add_argument("--seed", type=int, default=None, help="random seed (default: the recipe's)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.add_argument("overrides", nargs="*", default=[], help="recipe options as key=value")
    pr.set_defaults(func=cmd_prepare)

    f = sub.add_parser("fit", help="train an experiment (resumes its run if one exists)",
                       description="Train the experiment CONFIG. The run folder runs/<experiment>/<id> is derived "
                       "from the config, so running the same command again resumes from checkpoints/last.ckpt; "
                       "run.resume=false starts over in a new folder. The last line printed is the run folder.")
    f.add_argument("config", help="experiment YAML, e.g. experiments/supervised/demo_speech_noise.yaml")
    f.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    f.add_argument("overrides", nargs="*", default=[], help="key=value overrides")
    f.set_defaults(func=cmd_fit)

    t = sub.add_parser("test", help="score a run on the test split; writes results.json and results.md",
                       description="Score a run folder (or the run of an experiment YAML) on its dataset's test "
                       "split and write RUN/results.json and RUN/results.md.")
    t.add_argument("target", help="run folder (runs/<experiment>/<id>) or experiment YAML")
    t.add_argument("--ckpt", help="checkpoint to score (default: the run's checkpoints/last.ckpt)")
    t.add_argument("overrides", nargs="*", default=[],
                   help="key=value overrides (e.g. trainer.devices=2, eval.framewise=true)")
    t.set_defaults(func=cmd_test)

    s = sub.add_parser("separate", help="separate your own audio files with a trained checkpoint",
                       description="Separate WAV/FLAC/OGG files of any length, rate and channel count. Each "
                       "channel is resampled to the model's rate, separated in overlapping chunks, and the stems "
                       "are written at the input's rate and length to OUT/<file>/<stem>.wav; they sum to the input.")
    s.add_argument("checkpoint", help="a run's checkpoints/last.ckpt")
    s.add_argument("audio", nargs="+", help="audio files")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length (default 10)")
    s.add_argument("--overlap-seconds", type=float, default=1.0, help="overlap between chunks (default 1)")
    s.add_argument("--device", default="cpu", help="torch device (default cpu)")
    s.set_defaults(func=cmd_separate)

    from .demo import SUITES  # standard library only: --help stays fast

    d = sub.add_parser("demo", help="build the demo data, train and test, print the results table",
                       description="The main job: build demo-speech-noise (if not built), train every demo "
                       "experiment on it, test them and print one table. --suite nes adds GLO masking and NES-FT; "
                       "--suite chorales does the same for the "
                       "music methods on demo-chorales (supervised bound, NES, MaskNet); --suite masknet-ablations "
                       "trains MaskNet once per row of its paper's ablation table and prints median SDR and SIR; "
                       "--suite urban trains the "
                       "sound-event classifier on demo-urban and compares WeakSep (clip- and frame-level labels) "
                       "with the bound.")
    d.add_argument("--suite", choices=sorted(SUITES), default="speech",
                   help="speech (default: supervised + NES on demo-speech-noise), nes (+ GLOM, NES-FT), chorales, "
                   "masknet-ablations or urban")
    d.add_argument("--data", default=None, help="where the demo dataset is (or is built); default data/<recipe>")
    d.add_argument("--runs", default="runs", help="runs root")
    d.add_argument("overrides", nargs="*", default=[], help="key=value overrides applied to every demo experiment")
    d.set_defaults(func=cmd_demo)
    return p


def _quiet_library_chatter() -> None:
    """Drop advertisements and deprecation notices of our dependencies that say nothing about the run."""
    import logging

    for pattern in (".*does not have many workers.*", ".*LeafSpec.*", ".*`IterableDataset` has `__len__` defined.*"):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip"))
    logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").addFilter(
        lambda record: "`weights_only` was not set" not in str(record.msg))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # --key=value config overrides (the form W&B sweep agents pass) join the key=value ones
    # (pulled out before argparse, which cannot mix optional flags into a variable-length positional list)
    flags = {opt for action in parser._subparsers._group_actions for sub in action.choices.values()
             for a in sub._actions for opt in a.option_strings}
    overrides = [a for a in argv if "=" in a and (not a.startswith("-") or a.split("=", 1)[0] not in flags)]
    args = parser.parse_args([a for a in argv if a not in overrides])
    if overrides and not hasattr(args, "overrides"):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    if hasattr(args, "overrides"):
        args.overrides = overrides
    _quiet_library_chatter()
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from .config import ConfigError
    from .data.recipes import RecipeError, sources
    from .data.shards import DatasetError
    from .methods.base import NonFiniteLossError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, RecipeError, sources.MissingSourceError, FileNotFoundError) as e:
        print(f"lightning-sep {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as e:
        print(f"lightning-sep {args.command}: training stopped: {e}", file=sys.stderr)
        return EXIT_TRAINING
    except SIGTERMException:
        print(f"lightning-sep {args.command}: stopped by SIGTERM; checkpoints/last.ckpt holds the progress, "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_SIGTERM


if __name__ == "__main__":
    sys.exit(main())
