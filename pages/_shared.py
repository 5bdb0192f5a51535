"""What every page reads: the current run, the cached loaders, the run store.

Not a page (st.navigation lists only the page files). Pages import it as
``from pages._shared import ...``; Streamlit puts the entry script's folder on sys.path.

Caching, for a team on one server:
* ``_comparison_job`` is an ``st.cache_resource`` keyed on (model name, schemes tuple,
  backends tuple): the first session that asks starts one background computation, every
  other session asking for the same key gets the same job and watches the same progress.
* ``load_run`` is an ``st.cache_resource`` keyed on the run id: stored frames, read once and
  shared read-only (pages never modify a frame; no copy per rerun).
* ``live_model`` is an ``st.cache_resource`` keyed on (model, scheme, backend): a calibrated
  QuantizedModel for the views that need live tensors.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import streamlit as st

import qcal
from pages._state import fail, get_list_param, get_param, memory, set_param
from qcal.checkpoint.example import example_checkpoint
from qcal.checkpoint.explain import explain_bytes as qcal_explain_bytes
from qcal.recipes import Recipe
from qcal.repair.apply import CHEAP_CHAINS as REPAIR_CHAINS
from qcal.reporting import figures, views
from qcal.scheme_text import format_scheme, parse_scheme
from qcal.schemes import BACKENDS
from qcal.store import Store
from qcal.store.zoo_runs import find_or_compute_zoo_run, scorable_models

DEFAULT_MODEL = "digits_mobilenet"  # per-channel vs per-tensor differ by points here, not digits_cnn
DEFAULT_BACKENDS: tuple[str, ...] = ("fbgemm", "qnnpack")
BACKEND_CHOICES: tuple[str, ...] = BACKENDS
EVAL_SAMPLES = 300  # of the 597 held-out digits: enough to rank schemes, quick on 2 cores


# ---------------------------------------------------------------- the comparison job
@dataclass
class ComparisonJob:
    """One background computation of a zoo comparison, shared by every session."""

    model: str
    schemes: tuple[str, ...]  # preset names or scheme texts (qcal.parse_scheme reads both)
    backends: tuple[str, ...]
    calib_samples: int | None = None
    fraction: float = 0.0
    message: str = "starting"
    run_id: str | None = None
    comparison: Any = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> ComparisonJob:
        threading.Thread(target=self._run, name=f"qcal-compare-{self.model}", daemon=True).start()
        return self

    def _progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = max(0.0, min(1.0, float(fraction))), str(message)

    def _run(self) -> None:
        try:
            self.run_id, self.comparison = find_or_compute_zoo_run(
                self.model, self.schemes, self.backends, eval_samples=EVAL_SAMPLES,
                calib_samples=self.calib_samples, progress=self._progress)
        except Exception as err:  # shown to the user by current_run(), with what to do
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.fraction = 1.0
            self.done.set()


@st.cache_resource(show_spinner=False, max_entries=32)
def _comparison_job(model: str, schemes: tuple[str, ...], backends: tuple[str, ...],
                    calib_samples: int | None = None) -> ComparisonJob:
    return ComparisonJob(model, schemes, backends, calib_samples).start()


# ---------------------------------------------------------------- loaders
@st.cache_resource(show_spinner=False, max_entries=64)
def load_run(run_id: str) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """A stored run's metadata and frames, read once per run id (treat them as read-only)."""
    run = Store().load(run_id)
    return dict(run.meta), dict(run.frames)


_FIGURES: dict[str, Callable[..., Any]] = {
    "accuracy": lambda f: views.accuracy_figure(f["summary"]),
    "layer_error": lambda f, metric: figures.layer_error_figure(f["layers"], metric),
    "scale": lambda f, layer, value: views.scale_figure(f["scales"], layer, value),
    "weight_range": lambda f, layer, scheme: figures.weight_range_figure(f["scales"], layer, scheme),
    "histogram": lambda f, layer: figures.histogram_figure(f["histograms"], layer),
    "scatter": lambda f, layer, scheme: figures.sample_scatter_figure(
        f["samples"][f["samples"]["scheme"] == scheme], layer),
}


@st.cache_data(show_spinner=False, max_entries=512)
def run_figure(run_id: str, name: str, *args: str) -> Any:
    """A figure of a stored run's frames, built once per (run, figure, arguments)."""
    return _FIGURES[name](load_run(run_id)[1], *args)


@st.cache_data(show_spinner="Checking the registered models…", ttl=600)
def model_catalogue() -> tuple[list[str], list[str]]:
    """(the models the dashboard can score: the digits zoo and the registered ones that
    load and fit their data; one line per registry problem)."""
    from qcal.zoo.registry import catalogue

    models, problems = catalogue()
    usable = [n for n in scorable_models() if n in set(models["name"])]  # checked ones only
    return usable, [str(p) for p in problems]


def zoo_names() -> list[str]:
    """The models the dashboard can score: digits zoo models, then registered ones."""
    return model_catalogue()[0]


@st.cache_data(show_spinner=False)
def scheme_names() -> list[str]:
    """The preset schemes."""
    return list(qcal.SCHEMES)


@st.cache_resource(show_spinner="Calibrating the model for live tensors (once)…", max_entries=16)
def live_model(model: str, scheme: str, backend: str, calib_samples: int | None = None) -> Any:
    """A calibrated QuantizedModel of a zoo or registered model (``scheme``: a preset name or
    a scheme text), for views that need live tensors."""
    return views.calibrate_zoo(model, parse_scheme(scheme), backend, calib_samples=calib_samples)


@st.cache_resource(show_spinner="Rebuilding the recipe's model for live tensors (once)…", max_entries=16)
def live_recipe_model(model: str, recipe_json: str, backend: str, calib_samples: int | None) -> Any:
    """A saved recipe column's QuantizedModel, its repairs recomputed from their settings
    (``recipe_json``: the run's ``meta["recipes"][label]``, the cache key: settings, not labels)."""
    return views.calibrate_zoo(model, Recipe.from_data(json.loads(recipe_json)), backend, calib_samples=calib_samples)


@st.cache_resource(show_spinner="Observer lab: one calibration pass with every observer…", max_entries=16)
def observer_lab_view(model: str, layer: str, calib_samples: int | None) -> Any:
    """qcal's observer lab on the model's calibration inputs (the first ``calib_samples``)."""
    from qcal.analysis.observer_lab import observer_lab
    from qcal.zoo.registry import load_named

    named = load_named(model)
    return observer_lab(named.model, named.calib[:calib_samples], layer)


PAGE_CHECKPOINTS = (5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750, 1000)


@st.cache_resource(show_spinner="Following every observer's scales through one calibration pass…",
                   max_entries=8)
def trajectory_view(model: str, calib_samples: int | None) -> pd.DataFrame:
    """Every observer's activation scales vs samples seen (qcal's scale_trajectory)."""
    from qcal.calibration.trajectory import scale_trajectory
    from qcal.zoo.registry import load_named

    named = load_named(model)
    calib = named.calib[:calib_samples]
    checkpoints = [c for c in PAGE_CHECKPOINTS if c < len(calib)] + [len(calib)]
    return scale_trajectory(named.model, calib, checkpoints=checkpoints)


@st.cache_resource(show_spinner=False, max_entries=4)
def zoo_inputs(model: str) -> Any:
    """A few evaluation inputs of a zoo model's data set (for traces)."""
    return views.zoo_eval_inputs(model)


# ---------------------------------------------------------------- the current run
@dataclass(frozen=True)
class CurrentRun:
    """The run every page shows: its id, metadata, frames and where it came from."""

    run_id: str
    meta: dict[str, Any]
    frames: dict[str, pd.DataFrame]
    saved: bool  # True when opened from the Runs page (run=<id> in the URL)

    @property
    def model(self) -> str:
        return str(self.meta.get("model", "unknown"))

    @property
    def loadable(self) -> bool:
        """Whether live tensors can be recomputed here (the model is in this zoo)."""
        try:
            return self.model in zoo_names()
        except Exception:
            return False


def built_schemes() -> dict[str, str]:
    """The schemes built in the dashboard, name -> text, from the URL's ``build`` values
    (one per scheme; a bad text is named in an error box and skipped)."""
    out = {}
    for text in st.query_params.get_all("build") or memory().get("build", "").split("\n"):
        if not text:
            continue
        try:
            scheme = parse_scheme(text)
            out[scheme.name] = format_scheme(scheme)
        except (ValueError, TypeError) as err:
            st.error(f"The URL's built scheme {text!r} is refused: {err}")
    return out


def set_built_schemes(texts: list[str]) -> None:
    """Write the built schemes' texts to the URL (``build``, one value each)."""
    memory()["build"] = "\n".join(texts)
    st.query_params["build"] = texts  # a list: one build= per scheme


def calib_samples_param() -> int | None:
    """The calibration size the URL asks for (``calib``), or None: the whole split."""
    raw = st.query_params.get("calib") or memory().get("calib")
    return int(raw) if raw and raw.isdigit() and int(raw) > 0 else None


def comparison_setup() -> tuple[str, tuple[str, ...], tuple[str, ...], int | None]:
    """The (model, schemes, backends, calibration samples) the URL asks for, validated.

    Schemes are preset names and built schemes' texts, then each of them with each repair
    chain the URL asks for (``repairs``: "per_tensor_symmetric + equalize")."""
    models = zoo_names()
    model = get_param("model", models, DEFAULT_MODEL if DEFAULT_MODEL in models else None)
    built = built_schemes()
    names = [*scheme_names(), *built]
    chosen = get_list_param("schemes", names, names)
    chains = get_list_param("repairs", REPAIR_CHAINS, [])
    plain = [built.get(n, n) for n in chosen]
    schemes = (*plain, *(f"{s} + {chain.replace('+', ' + ')}" for s in plain for chain in chains))
    backends = tuple(get_list_param("backends", BACKEND_CHOICES, DEFAULT_BACKENDS))
    return model, schemes, backends, calib_samples_param()


def saved_run_id() -> str | None:
    """The saved run the URL (or this session) has open, if any."""
    return st.query_params.get("run") or memory().get("run")


def current_run() -> CurrentRun:
    """The run to show: a saved one (``run`` in the URL) or the live comparison's.

    Computes the comparison on first use with a progress bar (one computation per
    (model, schemes, backends), shared by every session), then reads the stored frames.
    """
    saved_id = saved_run_id()
    if saved_id:
        try:
            meta, frames = load_run(saved_id)
        except Exception as err:
            set_param("run", None)
            fail(f"Saved run {saved_id!r} could not be opened ({err}). Pick another run on the "
                 "Runs page, or remove `run=` from the URL to see the live comparison.")
        set_param("run", saved_id)
        return CurrentRun(saved_id, meta, frames, saved=True)

    try:
        model, schemes, backends, calib = comparison_setup()
    except Exception as err:
        fail(f"The model zoo is not available ({type(err).__name__}: {err}). Check that qcal is "
             "installed (`pip install -e .`) and that data/ is writable.")
    if model is None or not schemes or not backends:
        fail("Pick a model, at least one scheme and at least one backend on the Compare page.")
    job = _comparison_job(model, schemes, backends, calib)
    if not job.done.is_set():
        bar = st.progress(job.fraction, text=f"Computing {model} × {len(schemes)} schemes "
                                             f"× {', '.join(backends)} (first time only)…")
        while not job.done.wait(0.2):
            bar.progress(job.fraction, text=f"{model}: {job.message}")
        bar.empty()
    if job.error:
        _comparison_job.clear(model, schemes, backends, calib)  # the next visit retries
        fail(f"Computing the comparison failed: {job.error}. Reload the page to retry; if it "
             "fails again, run `python -m qcal compare` in a terminal to see the details.")
    try:
        meta, frames = load_run(job.run_id)
    except Exception as err:  # the stored run went away (deleted on the Runs page): recompute
        _comparison_job.clear(model, schemes, backends, calib)
        if st.session_state.get("qcal_retried") == job.run_id:
            fail(f"Run {job.run_id} cannot be read from the store ({err}). Delete it on the Runs "
                 "page, or point QCAL_STORE at another file, then reload.")
        st.session_state["qcal_retried"] = job.run_id
        st.rerun()
    return CurrentRun(job.run_id, meta, frames, saved=False)


def live_comparison_models(run: CurrentRun) -> dict[tuple[str, str], Any]:
    """The live models of the comparison computed in this process, if any."""
    if run.saved:
        return {}
    job = _comparison_job(*comparison_setup())
    cmp = job.comparison
    return dict(getattr(cmp, "models", {}) or {}) if job.run_id == run.run_id else {}


def quantized_model(run: CurrentRun, scheme: str, backend: str) -> Any:
    """The live QuantizedModel behind (scheme, backend) of ``run``, or None if not loadable.

    Reuses the comparison's own models when this process computed it; otherwise
    recalibrates the zoo model (same data, same scheme: the same qparams).
    """
    models = live_comparison_models(run)
    if (scheme, backend) in models:
        return models[(scheme, backend)]
    recipes = run.meta.get("recipes") or {}
    if run.loadable and scheme in recipes:  # a recipe column (repaired ones too), rebuilt from its data
        return live_recipe_model(run.model, json.dumps(recipes[scheme], sort_keys=True), backend,
                                 run.meta.get("calib_samples"))
    texts = run.meta.get("scheme_texts") or {}
    if not run.loadable or (scheme not in texts and scheme not in scheme_names()):
        return None
    return live_model(run.model, texts.get(scheme, scheme), backend, run.meta.get("calib_samples"))


@st.cache_resource(show_spinner="Tracing the model on one input…", max_entries=64)
def _traces(run_id: str, model: str, scheme: str, backend: str, sample: int, _qm: Any) -> dict:
    return _qm.trace(zoo_inputs(model)[sample:sample + 1])


def layer_trace(run: CurrentRun, scheme: str, backend: str, sample: int) -> dict[str, Any]:
    """Every layer's LayerTrace for one held-out input (live; cached per selection)."""
    return _traces(run.run_id, run.model, scheme, backend, sample,
                   quantized_model(run, scheme, backend))


def run_caption(run: CurrentRun) -> str:
    """One line naming the run a page shows."""
    meta = run.meta
    source = "saved run" if run.saved else "live comparison"
    return (f"{source} `{run.run_id}` · model **{run.model}** · "
            f"{len(meta.get('schemes', []))} schemes · backends {', '.join(meta.get('backends', []))}"
            f" · {meta.get('eval_samples', '?')} eval samples")


# ---------------------------------------------------------------- checkpoints
@st.cache_data(show_spinner="Reading the checkpoint as data…", max_entries=8, ttl=3600)
def explain_bytes(data: bytes, filename: str) -> pd.DataFrame:
    """qcal's explain of uploaded bytes (read as data only; ValueError says why it cannot)."""
    return qcal_explain_bytes(data, filename)


@st.cache_data(show_spinner="Building the example checkpoint (first time only)…")
def explain_example(backend: str) -> pd.DataFrame:
    """qcal.explain of the bundled example checkpoint for ``backend``."""
    return qcal.explain(example_checkpoint(backend=backend))
