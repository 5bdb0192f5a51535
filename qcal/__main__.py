"""``python -m qcal``: see ``qcal.cli``."""

from qcal.cli import main, short_list  # noqa: F401  (short_list: kept importable from here)

if __name__ == "__main__":
    raise SystemExit(main())
