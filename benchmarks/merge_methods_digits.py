"""Merge methods on the digits fine-tunes of notebook 03: best single vs soups vs task-vector merges.

Per seed, notebook 03's recipe: scikit-learn's digits (no download) split 70/30 into train+val /
test, then 75/25 into train / validation; a 64-64-10 MLP "pre-trained" on 200 training images, then
fine-tuned five times from that one start (learning rates 1e-3, 3e-3, 1e-2, 3e-3, 3e-2, 8 epochs on
the whole training split), each fine-tune committed from a checkout of the pre-trained version, so
the merge base of the five is found in the history. Every merge is made with ``repo.merge``.

Choices use the validation split only: the best single model, the greedy soup's ingredients, and
the ``scale`` (lambda) of task arithmetic, TIES and DARE-TIES, picked from a grid as the papers do
(the "default" rows use scale 1, mergekit's default). The table reports validation and test accuracy,
mean ± std over the seeds, and the paired test difference against the best single model.

    python benchmarks/merge_methods_digits.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

RECIPES = ((0.001, 1), (0.003, 2), (0.01, 3), (0.003, 4), (0.03, 5))  # notebook 03: (learning rate, seed)
SUM_SCALES = (0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)  # task arithmetic, DARE-TIES: sums over 5 task vectors
MEAN_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)  # TIES: a (weighted) mean of the agreeing values
DENSITIES = (0.2, 0.5, 0.8)
TUNED = {"task_arithmetic": ((None,), SUM_SCALES), "ties": (DENSITIES, MEAN_SCALES),
         "dare_ties": (DENSITIES, SUM_SCALES)}
LABELS = {"task_arithmetic": "task arithmetic, scale", "ties": "TIES, density and scale",
          "dare_ties": "DARE-TIES, density and scale"}


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(np.asarray(model(x, training=False)), axis=-1) == y))


def split(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.25, random_state=seed,
                                                      stratify=y_rest)
    return x_train, y_train, x_val, y_val, x_test, y_test


def fine_tunes(repo, seed: int, data) -> list:
    """Notebook 03's pre-training and five fine-tunes, committed; returns the fine-tunes' versions."""
    import keras

    x_train, y_train = data[0], data[1]
    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                            keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    net.fit(x_train[:200], y_train[:200], epochs=10, verbose=0)
    pre = repo.commit(net, "net", message="pre-trained", tags=["pretrained"])
    versions = []
    for lr, recipe_seed in RECIPES:
        repo.checkout(pre.id, net)  # HEAD is the pre-trained version: the fine-tune's parent
        keras.utils.set_random_seed(1000 * seed + recipe_seed)
        net.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
        net.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
        versions.append(repo.commit(net, "net", message=f"fine-tune lr={lr}"))
    return versions


def run(seed: int, store: Path) -> dict[str, tuple[float, float]]:
    from mvc_magics import Repo

    data = split(seed)
    x_val, y_val, x_test, y_test = data[2:]
    repo = Repo(store)
    versions = fine_tunes(repo, seed, data)
    ids = [v.id for v in versions]

    def val_accuracy(model):
        return accuracy(model, x_val, y_val)

    def scores(version) -> tuple[float, float]:
        model = repo.checkout(version.id, name="net")
        return val_accuracy(model), accuracy(model, x_test, y_test)

    singles = [scores(v) for v in versions]
    row = {"best single (chosen on validation)": max(singles, key=lambda s: s[0])}
    timings, chosen = {}, {}
    merges = {"uniform soup": {"method": "average"},
              "greedy soup": {"method": "greedy", "eval_fn": val_accuracy},
              "task arithmetic (scale 1)": {"method": "task_arithmetic"},
              "TIES (density 0.2, scale 1)": {"method": "ties"},
              "DARE-TIES (density 0.5, scale 1)": {"method": "dare_ties", "seed": seed},
              "Model Stock": {"method": "model_stock"}}
    for method, (densities, scales) in TUNED.items():
        extra = {"seed": seed} if method == "dare_ties" else {}
        start = time.perf_counter()
        grid = [{"scale": scale, "density": density} if density else {"scale": scale}
                for density in densities for scale in scales]
        # Ties on validation go to the first in the grid (the lower density, then the lower scale).
        best = max(grid, key=lambda params: repo.merge_preview(ids, method=method, eval_fn=val_accuracy,
                                                               name="net", **params, **extra).score)
        timings[f"{method} search ({len(grid)} previews)"] = time.perf_counter() - start
        chosen[method] = best
        merges[f"{LABELS[method]} tuned on validation"] = {"method": method, **best, **extra}
    for label, options in merges.items():
        start = time.perf_counter()
        version = repo.merge(ids, name="net", **options)
        timings[label] = time.perf_counter() - start
        row[label] = scores(version)
        if options["method"] not in ("average", "greedy"):
            assert version.report.base == versions[0].parents[0], "the base is the merge base: pre-trained"
    repo.close()
    row["_chosen_scales"] = chosen  # type: ignore[assignment]
    row["_seconds"] = timings  # type: ignore[assignment]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="seeds: data split, pre-training and fine-tunes")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.repeats):
            started = time.perf_counter()
            rows.append(run(seed, Path(tmp) / f"store{seed}" / ".mvc"))
            print(f"seed {seed} ({time.perf_counter() - started:.0f} s): "
                  + ", ".join(f"{k}={v[0]:.3f}/{v[1]:.3f}" for k, v in rows[-1].items() if not k.startswith("_"))
                  + f"; scales {rows[-1]['_chosen_scales']}", flush=True)
    print(f"\ndigits, 5 fine-tunes of one pre-trained MLP, {args.repeats} seeds; accuracy in %, mean ± std\n")
    print("| method | validation | test | test − best single (paired) |\n| --- | --- | --- | --- |")
    base = [r["best single (chosen on validation)"][1] for r in rows]
    for key in rows[0]:
        if key.startswith("_"):
            continue
        val = [100 * r[key][0] for r in rows]
        test = [100 * r[key][1] for r in rows]
        delta = [t - 100 * b for t, b in zip(test, base, strict=True)]
        print(f"| {key} | {statistics.fmean(val):.2f} ± {statistics.stdev(val):.2f} | "
              f"{statistics.fmean(test):.2f} ± {statistics.stdev(test):.2f} | "
              f"{statistics.fmean(delta):+.2f} ± {statistics.stdev(delta):.2f} |")
    print("\nparameters chosen on validation:", [r["_chosen_scales"] for r in rows])
    keys = rows[0]["_seconds"].keys()
    print("mean seconds:", {k: round(statistics.fmean(r["_seconds"][k] for r in rows), 2) for k in keys})


if __name__ == "__main__":
    main()
