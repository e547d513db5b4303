"""``python -m lightning_sep.data.recipes NAME --out DIR [--seed N] [key=value ...]``: build a dataset."""
from __future__ import annotations

import argparse
import sys
import time

from . import RECIPES, RecipeError, get_recipe, option_docs, options_from


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lightning_sep.data.recipes",
        description="Build a prepared dataset (dataset.json + tar shards) from a recipe.",
        epilog=f"recipes: {', '.join(sorted(RECIPES))}. `NAME --options` lists a recipe's options.")
    p.add_argument("name", help="recipe name")
    p.add_argument("--out", help="output folder, e.g. data/demo-speech-noise")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the recipe's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--options", action="store_true", help="list the recipe's options and exit")
    p.add_argument("overrides", nargs="*", help="recipe options as key=value")
    args = p.parse_intermixed_args(argv)
    try:
        recipe = get_recipe(args.name)
        if args.options:
            for key, doc in option_docs(recipe).items():
                print(f"{key} = {doc}")
            return 0
        if not args.out:
            p.error("--out DIR is required")
        options = options_from(recipe, args.overrides, seed=args.seed)
    except RecipeError as e:
        p.error(str(e))
    start = time.time()
    try:
        info = recipe.build(args.out, options, progress=not args.no_progress)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"built {info.name} into {args.out} in {time.time() - start:.1f} s")
    for split, pools in info.splits.items():
        for pool, pi in pools.items():
            print(f"  {split}/{pool}: {pi.clips} clips, {pi.seconds / 60:.1f} min, stems {pi.members}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
