"""Generate the bundled example checkpoints: data/example_checkpoint_{fbgemm,qnnpack}.pt.

A small CNN with the layer names of users' questions (``conv_3x3_32a``: Conv2d(1, 40, 3),
``conv_3x3_32b``, a Linear ``fc``) is trained briefly on scikit-learn's bundled digits,
calibrated with torch's default qconfig of each engine, converted in eager mode, and its
quantized ``state_dict()`` saved. ``qcal.checkpoint.explain.example_checkpoint()`` does the same on
first use; this script regenerates on demand.

    python scripts/make_example_checkpoint.py [--backend fbgemm|qnnpack] [--force]

The output directory is ``$QCAL_DATA_DIR`` if set, else ``data/`` at the repository root.
"""

from __future__ import annotations

import argparse

from qcal.checkpoint.example import EXAMPLE_BACKENDS, data_dir, example_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=EXAMPLE_BACKENDS, action="append",
                        help="engine(s) to generate for (default: all)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="regenerate existing files")
    args = parser.parse_args(argv)
    for backend in args.backend or EXAMPLE_BACKENDS:
        path = data_dir() / f"example_checkpoint_{backend}.pt"
        if args.force:
            path.unlink(missing_ok=True)
        print(example_checkpoint(backend))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
