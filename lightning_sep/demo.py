"""The demos: build a demo dataset, train each of its experiments on it, test, print one table.

``speech`` is the main job (`make demo`); ``nes`` adds GLO masking and NES-FT to it (`make demo-nes`); ``chorales``
compares the music methods (`make demo-masknet`); ``masknet-ablations`` runs MaskNet with each row of the paper's
ablation table (`make bench-masknet-ablations`); ``urban`` trains the sound-event classifier and compares WeakSep
with clip- and frame-level labels to the supervised bound (`make demo-weaksep`).
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Suite:
    recipe: str  # the demo dataset it builds
    target: str | None  # the stem the table reports (the unobserved one); None: every class, one column each
    experiments: tuple[tuple[str, str], ...]  # (label in the table, experiment YAML under experiments/); the first
    #                                           one that separates is the bound (ablations: the full method)
    ablations: bool = False  # the paper's ablation layout: median SDR and SIR over clips, each row against the first


# methods add their demo here as they arrive
SUITES = {
    "speech": Suite("demo-speech-noise", "speech", (
        ("supervised (upper bound)", "supervised/demo_speech_noise.yaml"),
        ("NES (final iteration)", "nes/demo_speech_noise.yaml"),
    )),
    "nes": Suite("demo-speech-noise", "speech", (
        ("supervised (upper bound)", "supervised/demo_speech_noise.yaml"),
        ("NES (final iteration)", "nes/demo_speech_noise.yaml"),
        ("GLOM", "glom/demo_speech_noise.yaml"),
        ("NES-FT (NES from GLOM)", "nes/demo_speech_noise_ft.yaml"),
    )),
    "chorales": Suite("demo-chorales", "vocals", (
        ("supervised (upper bound)", "supervised/demo_chorales.yaml"),
        ("NES (final iteration)", "nes/demo_chorales.yaml"),
        ("MaskNet", "masknet/demo_chorales.yaml"),
    )),
    "masknet-ablations": Suite("demo-chorales", "vocals", (
        ("MaskNet (full loss)", "masknet/demo_chorales.yaml"),
        *((f"w/o {term}", f"masknet/ablations/no_{name}.yaml") for term, name in (
            ("R1", "r1"), ("R2", "r2"), ("R3", "r3"), ("R4", "r4"), ("GAN_A", "gan_a"), ("GAN_C", "gan_c"),
            ("both GANs", "gans"))),
    ), ablations=True),
    "urban": Suite("demo-urban", None, (
        ("classifier (frozen assessor)", "weaksep/classifier_demo_urban.yaml"),  # WeakSep finds it by its config
        ("supervised (upper bound)", "supervised/demo_urban.yaml"),
        ("WeakSep, clip-level labels", "weaksep/demo_urban_clip.yaml"),
        ("classifier, frame-level labels", "weaksep/classifier_demo_urban_frame.yaml"),  # the frame run's assessor
        ("WeakSep, frame-level labels", "weaksep/demo_urban_frame.yaml"),
    )),
}
BASELINE_LABELS = {"iteration_0": "NES iteration 0 (X̂₀ = c·Y)"}


def run_demo(data: Path | None, runs: Path, overrides: list[str], experiments: Path, suite: str = "speech") -> int:
    from .data.recipes import get_recipe, options_from
    from .data.shards import DatasetInfo
    from .experiment import fit, load, test

    start = time.time()
    chosen = SUITES[suite]
    data = data or Path("data") / chosen.recipe
    recipe = get_recipe(chosen.recipe)
    stale = _stale_reason(data, recipe.VERSION)
    if stale:
        print(f"building {chosen.recipe} into {data} ({stale}) ...", flush=True)
        recipe.build(data, options_from(recipe, [], seed=0), progress=True)
    rows = []
    for label, yaml in chosen.experiments:
        cfg = load(str(experiments / yaml), [f"data.root={data}", f"run.root={runs}", *overrides])
        print(f"\n== {label}: {yaml}", flush=True)
        t0 = time.time()
        folder = fit(cfg)
        results = test(cfg, folder)
        rows.append((label, folder, results, time.time() - t0))
        for name, baseline in results.get("baselines", {}).items():
            if cfg.method == "nes" and cfg.nes.init == "glom":
                continue  # NES-FT's iteration 0 is GLOM's estimate, which has a row of its own
            rows.append((BASELINE_LABELS.get(name, name), None, baseline, None))
    if chosen.ablations:
        print(ablation_table(rows, chosen.target))
    elif chosen.target:
        print(summary_table(rows, chosen.target))
    else:
        print(class_table(rows, DatasetInfo.load(data).classes))
    main_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    child_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"\npeak memory: {main_gb:.2f} GB in this process, {child_gb:.2f} GB in the largest loader worker")
    print(f"demo finished in {(time.time() - start) / 60:.1f} min")
    return 0


def _stale_reason(data: Path, version: int) -> str | None:
    """Why the demo dataset must be (re)built, or None when the folder holds this recipe version's build."""
    import json

    index = data / "dataset.json"
    if not index.is_file():
        return "not built yet"
    built = json.loads(index.read_text()).get("made_by", {}).get("version")
    return None if built == version else f"built by recipe version {built}, this is version {version}"


def class_table(rows, classes: list[str]) -> str:
    """Mean test SI-SDRi of each class's output (over the clips that hold the class), one row per method, and the
    mean over classes as a share of the bound's (the first row that separates). Stems that are no class (a
    background) are left out of the columns and the mean, whoever separates them."""
    separating = [r for r in rows if r[2]["summary"]]
    classes = [c for c in classes if all(c in r[2]["summary"] for r in separating)]
    lines = ["", "Demo results: test split, SI-SDRi (dB) of each class's output, mean over the clips that hold it"]
    lines.append(f"{'method':<30}" + "".join(f"{c[:10]:>11}" for c in classes) + f"{'mean':>8}{'of bound':>9}"
                 f"{'minutes':>9}")
    lines.append("-" * len(lines[-1]))
    bound = None
    for label, _, results, seconds in separating:
        values = [results["summary"][c]["si_sdri"]["mean"] for c in classes]
        mean = sum(values) / len(values)
        bound = mean if bound is None else bound
        share = f"{100 * mean / bound:>8.0f}%" if bound > 0 else f"{'-':>9}"
        lines.append(f"{label:<30}" + "".join(f"{v:>11.2f}" for v in values) + f"{mean:>8.2f}{share}"
                     + (f"{seconds / 60:>9.1f}" if seconds else f"{'-':>9}"))
    lines.append("")
    for label, folder, results, _ in rows:
        if results.get("classifier"):
            c = results["classifier"]
            lines.append(f"{label}: clip-level mAP {c['map']:.2f}, F1 {c['f1']:.2f} on the test split")
        if results.get("by_events"):
            lines.append(f"{label}: SI-SDRi by events in the clip: " + ", ".join(
                f"{n}: {v['si_sdri']:.2f}" for n, v in results["by_events"].items()))
        if folder is not None:
            lines.append(f"{label}: results {folder / 'results.md'}")
    return "\n".join(lines)


def summary_table(rows, target: str) -> str:
    lines = ["", "Demo results: test split, mean over clips, dB (target stem; input = the mixture itself)",
             f"{'method':<30}{'stem':<9}{'input SI-SDR':>13}{'SI-SDR':>9}{'SI-SDRi':>9}{'of bound':>9}{'SDR':>8}"
             f"{'SIR':>8}{'SAR':>8}{'minutes':>9}"]
    lines.append("-" * len(lines[-1]))
    bound = None  # the supervised upper bound's SI-SDRi (the first row)
    for label, _, results, seconds in rows:
        summary = results["summary"]
        stem = target
        m = {k: v["mean"] for k, v in summary[stem].items()}
        bound = m["si_sdri"] if bound is None else bound
        share = f"{100 * m['si_sdri'] / bound:>8.0f}%" if bound > 0 else f"{'-':>9}"
        lines.append(f"{label:<30}{stem:<9}{m['si_sdr'] - m['si_sdri']:>13.2f}{m['si_sdr']:>9.2f}{m['si_sdri']:>9.2f}"
                     f"{share}{m.get('sdr', float('nan')):>8.2f}{m.get('sir', float('nan')):>8.2f}"
                     f"{m.get('sar', float('nan')):>8.2f}" + (f"{seconds / 60:>9.1f}" if seconds else f"{'-':>9}"))
    lines.append("")
    for label, folder, results, _ in rows:
        if folder is not None:
            lines.append(f"{label}: results {folder / 'results.md'}; audio and spectrograms {folder / 'examples'}")
        if results.get("iterations"):
            lines.append(f"{label}: validation SI-SDRi per outer iteration {folder / 'nes' / 'iterations.png'}")
    return "\n".join(lines)


def ablation_table(rows, target: str) -> str:
    """The paper's ablation layout: median over test clips of the target's SDR and SIR (BSS Eval), each row's median
    SDR against the first row's (the full loss), and the mean SI-SDRi beside them."""
    lines = ["", f"Ablations: test split, {target}, median over clips (dB); ΔSDR against the first row",
             f"{'run':<24}{'SDR':>8}{'ΔSDR':>8}{'SIR':>8}{'SAR':>8}{'SI-SDRi mean':>14}{'minutes':>9}"]
    lines.append("-" * len(lines[-1]))
    full = None
    for label, _, results, seconds in rows:
        s = results["summary"][target]
        full = s["sdr"]["median"] if full is None else full
        lines.append(f"{label:<24}{s['sdr']['median']:>8.2f}{s['sdr']['median'] - full:>+8.2f}"
                     f"{s['sir']['median']:>8.2f}{s['sar']['median']:>8.2f}{s['si_sdri']['mean']:>14.2f}"
                     + (f"{seconds / 60:>9.1f}" if seconds else f"{'-':>9}"))
    lines.append("")
    lines += [f"{label}: results {folder / 'results.md'}" for label, folder, _, _ in rows if folder is not None]
    return "\n".join(lines)
