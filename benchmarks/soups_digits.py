"""Model soups on scikit-learn's digits: best single model vs uniform soup vs greedy soup vs ensembles.

Like the tables of Wortsman et al. (2022), "Model soups": a small MLP is pre-trained on part of
the training split, then fine-tuned several times from that one start with different seeds and
learning rates; every fine-tune is committed to an mvc store, and the merges are made with
``repo.merge``. Ingredients are ranked and the greedy soup is built on the validation split; every
number in the table is accuracy on the held-out test split. No downloads (digits ships with
scikit-learn).

    python benchmarks/soups_digits.py [--repeats 3] [--fine-tunes 8] [--epochs 8]
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

LEARNING_RATES = (5e-4, 1e-3, 2e-3, 4e-3)


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(np.asarray(model(x, training=False)), axis=-1) == y))


def split(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=1000, random_state=seed, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, train_size=0.5, random_state=seed,
                                                    stratify=y_rest)
    return x_train, y_train, x_val, y_val, x_test, y_test


def run(seed: int, fine_tunes: int, epochs: int, store: Path) -> dict[str, float]:
    import keras

    from mvc_magics import Repo

    x_train, y_train, x_val, y_val, x_test, y_test = split(seed)
    repo = Repo(store)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train[:500], y_train[:500], epochs=10, batch_size=32, verbose=0)  # "pre-training"
    pre = repo.commit(model, "mlp", message="pre-trained", tags=["pretrained"])
    versions = []
    for i in range(fine_tunes):
        lr = LEARNING_RATES[i % len(LEARNING_RATES)]
        keras.utils.set_random_seed(1000 * seed + i)
        tuned = repo.checkout("pretrained", name="mlp")
        tuned.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
        tuned.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
        versions.append(repo.commit(tuned, "mlp", message=f"fine-tune {i} lr={lr}", parents=[pre.id],
                                    metrics={"val_accuracy": accuracy(tuned, x_val, y_val),
                                             "test_accuracy": accuracy(tuned, x_test, y_test)}))
    ids = [v.id for v in versions]

    def val_accuracy(m):
        return accuracy(m, x_val, y_val)

    timings = {}
    merges = {}
    for label, method in (("uniform soup", "average"), ("greedy soup", "greedy"),
                          ("ensemble (mean output)", "ensemble"), ("ensemble (majority vote)", "vote")):
        start = time.perf_counter()
        merges[label] = repo.merge(ids, method=method, eval_fn=val_accuracy, name="mlp")
        timings[label] = time.perf_counter() - start
    best = max(versions, key=lambda v: v.metrics["val_accuracy"])
    row = {
        "best single (chosen on val)": best.metrics["test_accuracy"],
        "mean single": statistics.fmean(v.metrics["test_accuracy"] for v in versions),
        "best single (oracle, on test)": max(v.metrics["test_accuracy"] for v in versions),
    }
    for label, version in merges.items():
        row[label] = accuracy(repo.checkout(version.id, name=version.name), x_test, y_test)
    row["_greedy_ingredients"] = len(merges["greedy soup"].report.ingredients)
    row["_ensemble_bytes_written"] = merges["ensemble (mean output)"].stats.bytes_written
    row["_uniform_seconds"] = timings["uniform soup"]
    row["_greedy_seconds"] = timings["greedy soup"]
    repo.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="data splits / pre-training seeds")
    parser.add_argument("--fine-tunes", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.repeats):
            rows.append(run(seed, args.fine_tunes, args.epochs, Path(tmp) / f"store{seed}" / ".mvc"))
            print(f"seed {seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in rows[-1].items()), flush=True)
    print(f"\ndigits, {args.fine_tunes} fine-tunes x {args.repeats} seeds, test accuracy (mean ± std):\n")
    print("| method | test accuracy |\n| --- | --- |")
    for key in rows[0]:
        if key.startswith("_"):
            continue
        values = [r[key] for r in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {key} | {100 * statistics.fmean(values):.2f} ± {100 * spread:.2f} |")
    uniform_s = statistics.fmean(r["_uniform_seconds"] for r in rows)
    greedy_s = statistics.fmean(r["_greedy_seconds"] for r in rows)
    print(f"\ngreedy soup ingredients: {[r['_greedy_ingredients'] for r in rows]} of {args.fine_tunes}; "
          f"ensemble bytes written: {[r['_ensemble_bytes_written'] for r in rows]}; "
          f"uniform soup merge+commit: {uniform_s:.2f} s, "
          f"greedy (with {args.fine_tunes * 2} evaluations): {greedy_s:.2f} s")


if __name__ == "__main__":
    main()
