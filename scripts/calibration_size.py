"""How many calibration samples each observer needs on a zoo model (the README's table).

One pass over 1200 digits (the 200-image calibration split, then the 1000 training images),
checkpointed every 50 samples (and at 10, 20, 30, 40). "Settled" means: from that
checkpoint on, every observed activation's scale stays within the tolerance of its value
after all 1200 samples. Usage: python scripts/calibration_size.py [model]
"""

from __future__ import annotations

import sys
import time

import torch

from qcal.calibration.trajectory import scale_trajectory, settling_samples
from qcal.zoo import datasets, zoo


def main(model_name: str = "digits_mobilenet") -> None:
    model = zoo.load(model_name)
    splits = datasets.digits_splits()
    x = torch.cat([splits.calib[0], splits.train[0]])
    started = time.perf_counter()
    traj = scale_trajectory(model, x, checkpoints=[10, 20, 30, 40, *range(50, len(x) + 1, 50)])
    print(f"{model_name}: {len(x)} samples, {traj['layer'].nunique()} observed activations, "
          f"{time.perf_counter() - started:.0f} s")
    for tol in (0.01, 0.05):
        s = settling_samples(traj, tol)
        table = s.groupby("observer", sort=False)["samples"].agg(["median", "max"])
        worst = s.loc[s.groupby("observer", sort=False)["samples"].idxmax(), ["observer", "layer"]]
        table["last_layer_to_settle"] = worst.set_index("observer")["layer"]
        print(f"\nwithin {tol:.0%} of the final scale from then on (median and max over activations):")
        print(table.to_string())


if __name__ == "__main__":
    main(*sys.argv[1:])
