"""``python -m qcal``: see ``qcal.cli.main``."""

from qcal.cli.explain import short_list  # noqa: F401  (kept importable from here)
from qcal.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
