"""The quickstart demo, end to end in a real IPython shell: ``python -m mvc_magics.demo [FOLDER]``.

Trains the reference linear regression (y = 2x), commits it after 10, 50 and 100 epochs with the
validation MSE, checks out ``best:val_mse`` and prints the log. The store is the default one:
``.mvc`` in FOLDER (default ``demo-output``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CELLS = [
    ("Train y = 2x for 10 epochs", """
import numpy as np, keras
keras.utils.set_random_seed(0)
x, y = np.array([[1.], [2.], [3.], [4.]]), np.array([[2.], [4.], [6.], [8.]])
x_val, y_val = np.array([[5.], [6.], [7.], [8.]]), np.array([[10.], [12.], [14.], [16.]])
model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse", metrics=["mse"])
model.fit(x, y, epochs=10, verbose=0, validation_data=(x_val, y_val));
"""),
    ("Commit it: the validation MSE of the last epoch is captured", '%mvc_commit model -m "10 epochs"'),
    ("Train to 50 epochs and commit", """
model.fit(x, y, epochs=40, verbose=0, validation_data=(x_val, y_val))
%mvc_commit model -m "50 epochs" --tag halfway
"""),
    ("Train to 100 epochs and commit", """
model.fit(x, y, epochs=50, verbose=0, validation_data=(x_val, y_val))
%mvc_commit model -m "100 epochs" --param epochs=100
"""),
    ("Go back to the first version, then to the best one", """
%mvc_checkout HEAD~2
print("prediction at x=10 after 10 epochs:", float(model.predict(np.array([[10.]]), verbose=0)[0, 0]))
%mvc_checkout best:val_mse
print("prediction at x=10 for best:val_mse:", float(model.predict(np.array([[10.]]), verbose=0)[0, 0]))
"""),
    ("The history", "history = %mvc_log model\nprint(history)"),
    ("Is the live model still what HEAD says?", "status = %mvc_status\nprint(status)"),
]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "demo-output").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.pop("MVC_DIR", None)
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.history_manager.enabled = False
    shell.colors = "NoColor"
    shell.run_line_magic("load_ext", "mvc_magics")
    for title, source in CELLS:
        print(f"\n# {title}")
        print("\n".join(f">>> {line}" for line in source.strip().splitlines()))
        result = shell.run_cell(source.strip(), store_history=False)
        if not result.success:
            print("demo failed in this cell", file=sys.stderr)
            return 1
    best = shell.run_line_magic("mvc_log", "model")
    chosen = shell.user_ns["model"]
    from mvc_magics import Repo

    with Repo(folder / ".mvc") as repo:
        head = repo.head("model")
        if head is None or head.message != "100 epochs" or repo.is_modified(chosen, head):
            print("demo check failed: best:val_mse should be the 100-epoch version", file=sys.stderr)
            return 1
    print(f"\nOK: best:val_mse is the 100-epoch version ({len(best)} versions in {folder / '.mvc'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
