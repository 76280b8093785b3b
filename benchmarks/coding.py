"""Storage coding benchmarks (issue 18): disk ratios of real training runs, coding throughput,
first commit and end-of-chain checkout against safetensors, head-only fine-tunes, merge.

    python -m benchmarks.coding            # Dense ~109 MB and ResNet50, 10 Adam epochs each
    python -m benchmarks.coding --quick    # small models, 3 epochs (a minute)

Ratios are taken within one run (ours and the peer back to back), so other processes' load cancels.
Results go to benchmarks/coding_results.json; docs/benchmarks.md reports them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from mvc_magics import Repo
from mvc_magics.storage.codec import coding

from .harness import REPO_ROOT, Workspace, settle
from .measure import dir_bytes, peak_rss_growth
from .models import BenchModel, dense_stack


def _train_data(model, n: int = 32):
    shape = (n, *model.input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, int(model.output_shape[-1]), n)
    return x, y


def _compile(model, lr: float = 1e-3):
    import keras

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)


def _planes(store: Path) -> dict[str, list[float]]:
    """Stored / raw bytes per byte plane over every coded float32 tensor of a store: what bounds the ratio."""
    files = list((store / "objects").rglob("*.h5"))
    nbytes = {}
    for path in files:
        with h5py.File(path, "r") as f:
            if "manifest" in f:
                entries = json.loads(f["manifest"][()])
                nbytes.update({e["hash"]: e["nbytes"] for e in entries if e["dtype"] == "float32"})
    raw, kept = np.zeros(4), np.zeros(4)
    for path in files:
        with h5py.File(path, "r") as f:
            for digest, dataset in f["tensors"].items():
                table = dataset.attrs.get("mvc_planes")
                if table is not None and digest in nbytes and len(table) == 4:
                    kept += table[:, 1]
                    raw += nbytes[digest] // 4
    shares = [round(float(v), 3) for v in kept / np.maximum(raw, 1)]
    return {"plane stored/raw (0=low mantissa .. 3=sign+exponent)": shares}


def epochs(bm: BenchModel, ws: Workspace, n: int) -> dict:
    """``n`` epoch checkpoints of an Adam run, each committed, then ``gc --repack``: store / n raw
    copies (and the previous epoch's tensors, under ``_previous``, for the delta throughput)."""
    from mvc_magics.adapters.keras import KerasAdapter

    _compile(bm.model)
    x, y = _train_data(bm.model)
    store = ws.fresh(f"epochs-{bm.key}") / ".mvc"
    commit_s = []
    previous = None
    with Repo(store) as repo:
        for _ in range(n):
            previous = {k: np.array(v) for k, v in KerasAdapter().get_state(bm.model).items()}
            bm.model.fit(x, y, epochs=1, batch_size=16, verbose=0)
            start = time.perf_counter()
            repo.commit(bm.model, "model")
            commit_s.append(time.perf_counter() - start)
    committed = dir_bytes(store / "objects")
    with Repo(store) as repo:  # commits write loose files; repack codes them and makes the (reverse) deltas
        start, cpu = time.perf_counter(), time.process_time()
        repo.gc(repack=True)
        repack_s, repack_cpu = time.perf_counter() - start, time.process_time() - cpu
    objects = dir_bytes(store / "objects")
    sizes = sorted(p.stat().st_size for p in (store / "objects").rglob("*.h5"))
    return {"case": f"{n} Adam epoch checkpoints / {n} raw copies (after gc --repack)", "model": bm.key,
            "model_bytes": bm.nbytes, "ratio": objects / (n * bm.nbytes),
            "as committed (loose, unless the automatic pack ran) / raw copies": committed / (n * bm.nbytes),
            "repack seconds": repack_s, "repack CPU seconds": repack_cpu, "largest file / raw": sizes[-1] / bm.nbytes,
            "smallest file / raw": sizes[0] / bm.nbytes, "_previous": previous,
            "commit seconds (median)": float(np.median(commit_s)),
            **_planes(store), "store": str(store)}


def single_version(bm: BenchModel, ws: Workspace) -> list[dict]:
    """One trained float32 version / raw bytes, and the same weights as bfloat16."""
    import ml_dtypes

    from mvc_magics.adapters.keras import KerasAdapter

    state = {k: np.array(v) for k, v in KerasAdapter().get_state(bm.model).items()}
    out = []
    with Repo(ws.fresh(f"f32-{bm.key}") / ".mvc") as repo:
        repo.commit(state, "f32")
        repo.gc(repack=True)  # a commit writes loose: packing codes it
        out.append({"case": "one float32 version / raw bytes", "model": bm.key,
                    "ratio": dir_bytes(repo.path / "objects") / bm.nbytes})
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items() if v.dtype == np.float32}
    raw_bf16 = sum(v.nbytes for v in bf16.values())
    try:
        with Repo(ws.fresh(f"bf16-{bm.key}") / ".mvc") as repo:
            repo.commit(bf16, "bf16")
            repo.gc(repack=True)
            ratio = dir_bytes(repo.path / "objects") / raw_bf16
            how = "committed"
    except Exception as exc:  # bfloat16 commits need issue 15's dtype support
        coded = sum((c.nbytes if (c := coding.encode(coding.raw_bytes(v), 2)) else v.nbytes) for v in bf16.values())
        ratio, how = coded / raw_bf16, f"coded bytes only ({type(exc).__name__}: commit not possible here)"
    out.append({"case": "one bfloat16 version / raw bytes", "model": bm.key, "ratio": ratio, "how": how})
    return out


def throughput(bm: BenchModel, previous: dict[str, np.ndarray] | None = None) -> dict:
    """Encode/decode MB/s of the model's float32 tensors: plain planes+zstd, and deltas against the
    previous epoch's tensors (``previous``; else a synthetic small update). Tensors are coded two at
    a time, as a checkout's reader and a commit's writer do (``2 at a time``), and one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from mvc_magics.adapters.keras import KerasAdapter

    state = {k: a for k, a in KerasAdapter().get_state(bm.model).items() if a.dtype == np.float32}
    arrays = [np.ascontiguousarray(a) for a in state.values()]
    if previous is not None and all(k in previous and previous[k].shape == a.shape for k, a in state.items()):
        bases, how = [np.ascontiguousarray(previous[k]) for k in state], "the previous epoch"
    else:
        rng = np.random.default_rng(1)
        bases = [a - (rng.standard_normal(a.shape) * 1e-4 * (np.abs(a).mean() + 1e-8)).astype(np.float32)
                 for a in arrays]
        how = "a synthetic small update"
    total = sum(a.nbytes for a in arrays)
    result = {"case": "coding throughput", "model": bm.key, "MB": total / 1e6, "delta base": how}

    def enc(item):
        a, b = item
        return coding.encode(coding.raw_bytes(a), 4, None if b is None else coding.raw_bytes(b))

    def dec(item):
        a, b, c = item
        if c is not None:
            out = np.empty(a.nbytes, np.uint8)
            table = coding.check_table(c.planes, 4, c.nbytes, a.nbytes)
            coding.decode_into(out, c.data, table, None if b is None else coding.raw_bytes(b), c.coding)

    for workers in (2, 1):
        pool = ThreadPoolExecutor(workers)
        suffix = "" if workers == 2 else " (1 at a time)"
        for label, refs in (("plain", [None] * len(arrays)), ("delta", bases)):
            start, cpu = time.perf_counter(), time.process_time()
            coded = list(pool.map(enc, zip(arrays, refs)))
            enc_s, enc_cpu = time.perf_counter() - start, time.process_time() - cpu
            start, cpu = time.perf_counter(), time.process_time()
            list(pool.map(dec, zip(arrays, refs, coded)))
            dec_s, dec_cpu = time.perf_counter() - start, time.process_time() - cpu
            size = sum(c.nbytes if c is not None else a.nbytes for a, c in zip(arrays, coded))
            result[f"{label} encode MB/s{suffix}"] = total / enc_s / 1e6
            result[f"{label} decode MB/s{suffix}"] = total / dec_s / 1e6
            # Per CPU-second of this process (all its threads): what one core does, whatever the load.
            result[f"{label} encode MB per CPU-s{suffix}"] = total / enc_cpu / 1e6
            result[f"{label} decode MB per CPU-s{suffix}"] = total / dec_cpu / 1e6
            result[f"{label} stored/raw"] = size / total
        pool.shutdown()
    result.update(_hdf5plugin(arrays))
    return result


def _hdf5plugin(arrays: list[np.ndarray]) -> dict:
    """The same tensors through HDF5 filters: byte shuffle + zstd (hdf5plugin), Blosc2 shuffle + zstd."""
    import tempfile

    import hdf5plugin

    out = {}
    total = sum(a.nbytes for a in arrays)
    for label, options in (("hdf5 shuffle+Zstd(1)", {"shuffle": True, **hdf5plugin.Zstd(clevel=1)}),
                           ("hdf5 Blosc2 shuffle+zstd(1)", dict(hdf5plugin.Blosc2(cname="zstd", clevel=1,
                                                                               filters=hdf5plugin.Blosc2.SHUFFLE)))):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "f.h5"
            start = time.perf_counter()
            with h5py.File(path, "w") as f:
                for i, a in enumerate(arrays):
                    f.create_dataset(str(i), data=a, chunks=True if a.size > 1 else None, **options)
            enc = time.perf_counter() - start
            start = time.perf_counter()
            with h5py.File(path, "r") as f:
                for i in range(len(arrays)):
                    f[str(i)][()]
            dec = time.perf_counter() - start
            out[f"{label} stored/raw"] = path.stat().st_size / total
            out[f"{label} encode MB/s"] = total / enc / 1e6
            out[f"{label} decode MB/s"] = total / dec / 1e6
    return out


def commit_and_checkout(bm: BenchModel, ws: Workspace, store: Path, reps: int) -> list[dict]:
    """First commit / safetensors save_file+fsync; checkout at the end of the delta chain /
    safetensors load_file+assign (same run, back to back)."""
    import safetensors.numpy as st

    folder = ws.fresh(f"peer-{bm.key}")
    path = folder / "peer.safetensors"

    def save() -> None:
        named = {f"{i}:{v.path}": np.asarray(v.numpy()) for i, v in enumerate(bm.model.weights)}
        st.save_file(named, str(path))
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())

    def load() -> None:
        state = st.load_file(str(path))
        for i, variable in enumerate(bm.model.weights):
            variable.assign(state[f"{i}:{variable.path}"])

    commit_ratio = []
    for rep in range(reps):
        fresh = ws.fresh(f"first-{bm.key}-{rep}") / ".mvc"
        with Repo(fresh) as repo:
            settle()
            start = time.perf_counter()
            repo.commit(bm.model, "model")
            ours = time.perf_counter() - start
        settle()
        start = time.perf_counter()
        save()
        commit_ratio.append(ours / (time.perf_counter() - start))
    rows = [{"case": "first commit / safetensors save_file+fsync", "model": bm.key,
             "ratio": float(np.median(commit_ratio)), "all": commit_ratio}]
    with Repo(store) as repo:
        history = [v.id for v in repo.log("model")]
        depths = {vid: _chain_depth(store, vid) for vid in history}
        newest = history[0]
        # The longest chain a repacked store has: the oldest version of the newest group.
        deepest = next((vid for vid in history[1:] if depths[vid] >= max(depths.values())), newest)
        for label, vid in (("the newest version (kept whole by repack)", newest),
                           (f"the oldest of the newest group (a chain of depth {depths[deepest]})", deepest)):
            ratios, ours_cpu, peer_cpu = [], [], []
            for rep in range(reps):
                bm.change_last_layer(seed=500 + rep)  # the live model differs from the version checked out
                settle()
                start, cpu = time.perf_counter(), time.process_time()
                repo.checkout(vid, bm.model)
                ours, ours_c = time.perf_counter() - start, time.process_time() - cpu
                settle()
                start, cpu = time.perf_counter(), time.process_time()
                load()
                peer, peer_c = time.perf_counter() - start, time.process_time() - cpu
                ratios.append(ours / peer)
                ours_cpu.append(ours_c)
                peer_cpu.append(peer_c)
            rows.append({"case": f"checkout of {label} / safetensors load_file+assign", "model": bm.key,
                         "ratio": float(np.median(ratios)), "all": ratios, "depth": depths[vid],
                         "CPU seconds, ours (median)": float(np.median(ours_cpu)),
                         "CPU seconds, safetensors (median)": float(np.median(peer_cpu))})
    return rows


def _chain_depth(store: Path, vid: str) -> int:
    with h5py.File(store / "objects" / vid[:2] / f"{vid}.h5", "r") as f:
        return max((int(d.attrs.get("mvc_depth", 0)) for d in f["tensors"].values()), default=0)


def head_finetunes(bm: BenchModel, ws: Workspace, n: int = 10) -> dict:
    """``n`` fine-tunes of the head only (the rest frozen), each committed: store / one copy."""
    x, y = _train_data(bm.model)
    store = ws.fresh(f"heads-{bm.key}") / ".mvc"
    for layer in bm.model.layers[:-1]:
        layer.trainable = False
    _compile(bm.model, lr=1e-4)
    with Repo(store) as repo:
        for _ in range(n):
            bm.model.fit(x, y, epochs=1, batch_size=16, verbose=0)
            repo.commit(bm.model, "tuned")
    for layer in bm.model.layers:
        layer.trainable = True
    committed = dir_bytes(store / "objects")
    with Repo(store) as repo:  # commits code each tensor alone; repack makes the deltas
        repo.gc(repack=True)
    return {"case": f"{n} head-only fine-tunes / one copy (after gc --repack)", "model": bm.key,
            "ratio": dir_bytes(store / "objects") / bm.nbytes, "as committed / one copy": committed / bm.nbytes,
            "head share of the model": bm.last_layer_nbytes / bm.nbytes}


def merge(bm: BenchModel, ws: Workspace, store: Path) -> dict:
    """Average of the last 5 checkpoints / reading (load_state) the 5 inputs; peak RSS growth."""
    with Repo(store) as repo:
        ids = [v.id for v in repo.log("model")[:5]]
        start = time.perf_counter()
        for vid in ids:
            repo.load_state(vid)
        read = time.perf_counter() - start
        growth, seconds, _ = peak_rss_growth(lambda: repo.merge(ids, method="average", name="soup"))
    return {"case": "merge (average) of 5 / reading the 5 inputs", "model": bm.key, "ratio": seconds / read,
            "peak RSS growth / model": (growth or 0) / bm.nbytes}


def resnet50_small_input() -> BenchModel:
    """ResNet50 (weights=None) on 64x64 inputs: the same 320 variables and 25.6M parameters as at
    224x224 (convolution weights do not depend on the input size), so 10 epochs train in minutes."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=1000)
    return BenchModel("resnet50", "ResNet50, weights=None, 64x64 inputs (25.6M params, 320 variables)", model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, 3 epochs")
    parser.add_argument("--models", default="dense,resnet50")
    parser.add_argument("--throughput-only", action="store_true", help="only the coding throughput case")
    parser.add_argument("--json", default=None, help="where to write the results (default: benchmarks/)")
    args = parser.parse_args(argv)
    builders = {"dense": lambda: dense_stack(2048, 6, 1000, "dense_100mb", "Dense 6x2048 + head 1000"),
                "resnet50": resnet50_small_input}
    if args.quick:
        builders = {"dense": lambda: dense_stack(256, 3, 10, "dense_small", "Dense 3x256 + head 10")}
    n = 3 if args.quick else 10
    ws = Workspace()
    rows: list[dict] = []
    try:
        for key in args.models.split(","):
            if key not in builders:
                continue
            bm = builders[key]()
            if args.throughput_only:
                rows.append(throughput(bm))
                print(json.dumps(rows[-1], default=float))
                continue
            run = epochs(bm, ws, n)
            previous = run.pop("_previous")
            rows.append(run)
            rows += single_version(bm, ws)
            rows.append(throughput(bm, previous))
            rows += commit_and_checkout(bm, ws, Path(run["store"]), 3)
            rows.append(merge(bm, ws, Path(run["store"])))
            if key == "dense":
                rows.append(head_finetunes(bm, ws))
            for row in rows:
                print(json.dumps(row, default=float))
    finally:
        ws.cleanup()
    out = Path(args.json) if args.json else REPO_ROOT / "benchmarks" / (
        "coding_results_quick.json" if args.quick else "coding_results.json")
    out.write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
