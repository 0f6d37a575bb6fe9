"""depthlab from Python, as in a notebook: train a small sweep, then read the store as pandas DataFrames.

    python examples/python_api.py [STORE]

Each step is one call; in a notebook, run them cell by cell (progress shows under the cell). The sweep here is
tiny and synthetic so that it runs in seconds (the test suite runs this file); point `SPEC` at a preset ("demo")
or a YAML file for a real one.
"""

import sys

import depthlab

STORE = sys.argv[1] if len(sys.argv) > 1 else "python_api.sqlite"
SPEC = {  # what a spec file holds: deep against shallow at equal parameters, 3 seeds
    "name": "api-example",
    "defaults": {"dataset": "synthetic", "width": 8, "stem_stride": 2, "epochs": 8, "lr": 0.01, "val_split": 256,
                 "batch_size": 64},
    "grid": {"topology": ["sequential", "parallel"], "blocks": [2], "seed": [0, 1, 2]},
}

# 1. Train (resumable: run it again and nothing trains twice). Returns the sweep's runs as a DataFrame.
runs = depthlab.run_sweep(SPEC, store=STORE, progress=False)
print(runs[["run_id", "topology", "seed", "status", "val_acc", "pack", "pack_size", "pack_seconds"]])

# 2. Every field, metric and environment entry of every run; constant fields are kept.
print(runs.groupby("topology")[["val_loss", "val_acc"]].agg(["mean", "std"]))
print("compute: the packs took", round(runs["pack_seconds"].sum(), 1), "s (time shared in a pack counted once)")

# 3. Learning curves in long form: one row per run and epoch.
curves = depthlab.history(STORE, sweep="api-example")
print(curves.groupby("epoch")["val_loss"].mean().round(4).to_dict())

# 4. The paired comparison, one row per metric, value pair and band.
verdicts = depthlab.compare(STORE, sweep="api-example", metrics=["val_acc"])
print(verdicts[["metric", "a", "b", "q_band", "n_pairs", "mean", "ci_low", "ci_high", "verdict"]].to_string())
