"""The dashboard under streamlit's AppTest: every page renders, and widgets change numbers.

Each interaction test changes one widget and checks that the number the page shows equals
the one qcal computes for the new selection (the frame's value, or qcal.int8's multiplier).
The tests open digits_cnn (``model=`` in the URL; the first screen's default, digits_mobilenet,
is the browser test's): the first run computes that comparison once (the six presets,
fbgemm + qnnpack); streamlit's caches share it between the tests of this process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the dashboard imports pages._shared

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = str(ROOT / "dashboard.py")
PAGES = ["compare", "scales", "layers", "sensitivity", "repairs", "silicon", "requant", "explain", "runs"]
FIRST_RUN_TIMEOUT = 240  # the first run computes the default comparison
TIMEOUT = 60
MODEL = "digits_cnn"  # small and quick; every test's URL names it


@pytest.fixture(scope="module", autouse=True)
def _store(tmp_path_factory: pytest.TempPathFactory):
    """A store for this test session (shared with the browser test), unless CI set one."""
    old = os.environ.get("QCAL_STORE")
    if not old:
        os.environ["QCAL_STORE"] = str(tmp_path_factory.getbasetemp() / "dashboard-runs.sqlite")
    yield
    if not old:
        os.environ.pop("QCAL_STORE", None)


def app(page: str | None = None, **query: str):
    """A fresh AppTest of the dashboard, run once (on ``page`` if given)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT)
    at.query_params.update({"model": MODEL, **query})
    at.run(timeout=FIRST_RUN_TIMEOUT)
    if page is not None and page != "compare":
        at.switch_page(f"pages/{page}.py").run(timeout=FIRST_RUN_TIMEOUT)
    return at


def assert_clean(at) -> None:
    """No exception and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def current_run():
    """The stored run the dashboard's default view shows (as the pages read it)."""
    from pages._shared import DEFAULT_BACKENDS
    from qcal.analysis.compare import planned_backends
    from qcal.store import Store
    from qcal.store.zoo_runs import find_run

    store = Store()
    run_id = find_run(store.list(), MODEL, list(_schemes()), planned_backends(list(_schemes()), list(DEFAULT_BACKENDS)))
    assert run_id, "the dashboard saved no run for its default comparison"
    return store.load(run_id)


def _schemes():
    import qcal

    return tuple(qcal.SCHEMES)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_exception(page):
    at = app(page)
    assert_clean(at)
    assert at.title, f"{page} shows no title"


def metric(at, label: str):
    """The metric whose label starts with ``label``."""
    found = [m for m in at.metric if m.label.startswith(label)]
    assert found, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return found[0]


def table(at, *columns: str):
    """The first st.dataframe that has all these columns, as a DataFrame."""
    found = [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]
    assert found, f"no table with {columns}; have {[list(d.value.columns) for d in at.dataframe]}"
    return found[0]


def test_every_page_runs_inside_the_router_with_its_sidebar():
    at = app()
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        assert_clean(at)
        assert at.sidebar.selectbox(key="param_model").value == "digits_cnn", page


def test_compare_metric_follows_the_picked_scheme_and_backend():
    at = app("compare")
    summary = current_run().summary
    at.selectbox(key="param_scheme").set_value("per_channel_symmetric").run()
    at.selectbox(key="param_backend").set_value("qnnpack").run()
    assert_clean(at)
    row = summary[(summary["scheme"] == "per_channel_symmetric") & (summary["backend"] == "qnnpack")].iloc[0]
    assert metric(at, "int8 ").value == f"{row['value']:.2%}"
    assert metric(at, "int8 size").value == f"{row['int8_bytes'] / 1024:.1f} KiB"
    assert at.query_params["scheme"] == "per_channel_symmetric"
    assert at.query_params["backend"] == "qnnpack"


def test_compare_worst_layers_table_is_the_frames_worst_layers():
    from qcal.reporting import views

    at = app("compare")
    expected = views.worst_layers_table(current_run().layers, 3)
    shown = table(at, "scheme", "backend", "worst 1")
    assert shown.values.tolist() == expected.values.tolist()


def test_scales_spread_follows_the_picked_layer():
    from qcal.reporting import views

    at = app("scales")
    scales = current_run().scales
    layers = views.layer_names(scales[scales["tensor"] == "weight"])
    at.selectbox(key="param_layer").set_value(layers[-1]).run()
    assert_clean(at)
    shown = table(at, "scale_max", "range_ratio")
    expected = views.scale_spread(scales, layers[-1])
    assert shown["scale_max"].tolist() == pytest.approx(expected["scale_max"].tolist())
    assert shown["channels"].tolist() == expected["channels"].tolist()
    assert at.query_params["layer"] == layers[-1]


def test_layers_worst_sqnr_follows_the_picked_layer():
    at = app("layers")
    layers = current_run().layers
    at.selectbox(key="param_layer").set_value("fc1").run()
    assert_clean(at)
    worst = layers[layers["layer"] == "fc1"]["sqnr_db"].min()
    assert metric(at, "fc1: worst SQNR").value == f"{worst:.2f} dB"
    at.radio(key="layer_metric").set_value("mse").run()
    assert_clean(at)
    shown = table(at, "layer", "kind")
    assert list(shown["layer"]) == list(dict.fromkeys(layers["layer"]))


def test_a_copied_url_reopens_the_same_view():
    at = app("layers", scheme="qnnpack_default", backend="qnnpack", layer="conv_3x3_64")
    assert_clean(at)
    assert at.selectbox(key="param_layer").value == "conv_3x3_64"
    assert at.query_params["layer"] == "conv_3x3_64"
    at = app("requant", scheme="qnnpack_default", backend="qnnpack", layer="fc2")
    assert at.selectbox(key="param_scheme").value == "qnnpack_default"
    assert at.selectbox(key="param_layer").value == "fc2"


def test_requant_multiplier_follows_the_picked_layer_and_channel():
    import qcal
    from qcal.reporting import views

    at = app("requant")
    at.selectbox(key="param_scheme").set_value("fbgemm_default").run()
    at.selectbox(key="param_backend").set_value("fbgemm").run()
    at.selectbox(key="param_layer").set_value("conv_3x3_64").run()
    at.number_input(key="channel_conv_3x3_64").set_value(5).run()
    assert_clean(at)
    layer = views.calibrate_zoo(MODEL, "fbgemm_default", "fbgemm").quant_layers["conv_3x3_64"]
    rq = qcal.int8.requant_multipliers(layer.input_scale, layer.weight_scale, layer.output_scale,
                                       layer.bias, backend="fbgemm")
    shown = metric(at, "fbgemm multiplier")
    assert shown.value == f"{float(rq.multiplier[5]):.7g}"
    assert shown.help.endswith(f"{float(rq.multiplier[5]):.9g}")  # float32 needs 9 digits
    assert metric(at, "Q31 multiplier").value == str(int(rq.q31_multiplier[5]))
    assert metric(at, "Q31 shift").value == str(int(rq.q31_shift[5]))
    # the worked element agrees with qcal's engine and with torch's fbgemm
    assert metric(at, "worked steps").value == metric(at, "qcal integer engine").value \
        == metric(at, "torch fbgemm").value
    assert at.success


def test_requant_steps_follow_the_backend():
    at = app("requant", scheme="per_channel_affine", backend="qnnpack", layer="fc1")
    assert_clean(at)
    steps = table(at, "step", "formula")
    assert "bias quantized to int32" in set(steps["step"])
    at.selectbox(key="param_backend").set_value("fbgemm").run()
    steps = table(at, "step", "formula")
    assert "add bias (float)" in set(steps["step"])  # fbgemm keeps a per-channel float bias


def test_requant_shows_the_cpu_report_qcal_cpu_prints():
    from qcal.int8.cpu.report import format_cpu_report

    at = app("requant")
    assert_clean(at)
    assert [c.value for c in at.code if c.value.startswith("this machine: ")] == [format_cpu_report()]


def test_explain_table_is_qcal_explain_of_the_picked_example():
    import qcal
    from qcal.checkpoint.explain import example_checkpoint

    at = app("explain")
    at.selectbox(key="explain_backend").set_value("qnnpack").run()
    assert_clean(at)
    expected = qcal.explain(example_checkpoint("qnnpack"))
    shown = table(at, "key", "role")
    assert shown["key"].tolist() == expected["key"].tolist()
    assert shown["role"].tolist() == expected["role"].tolist()


def test_explain_reads_an_upload_and_refuses_a_bad_one_with_a_message():
    import qcal
    from qcal.checkpoint.explain import example_checkpoint

    path = example_checkpoint("fbgemm")
    at = app("explain")
    at.radio(key="explain_source").set_value("upload").run()
    at.file_uploader(key="explain_upload").upload("model.pt", path.read_bytes()).run()
    assert_clean(at)
    assert table(at, "key", "role")["key"].tolist() == qcal.explain(path)["key"].tolist()
    at.file_uploader(key="explain_upload").upload("evil.pt", b"not a checkpoint").run()
    assert not at.exception
    assert at.error and "evil.pt could not be explained" in at.error[0].value


def test_runs_page_opens_shares_and_deletes_a_run():
    from qcal.store.store import Store

    store = Store()
    run = current_run()
    copy_id = store.save(run.frames, {**run.meta, "title": "copy for the delete test"})
    at = app("runs")
    at.selectbox(key="param_pick").set_value(copy_id).run()
    assert_clean(at)
    assert f"run={copy_id}" in at.code[0].value
    at.checkbox(key="confirm_delete").check().run()
    at.button(key="delete_run").click().run()
    assert_clean(at)
    assert copy_id not in set(store.list()["id"])

    at.selectbox(key="param_pick").set_value(run.id).run()
    at.button(key="open_run").click().run()
    assert_clean(at)
    assert at.title[0].value == "Compare schemes and backends"
    assert at.query_params["run"] == run.id
    assert any("saved run" in c.value for c in at.caption)


def test_a_run_whose_model_is_not_here_shows_frames_and_says_why_no_live_view():
    from qcal.store.store import Store

    run = current_run()
    foreign = Store().save(run.frames, {**run.meta, "model": "my_model", "model_source": "mine:make"})
    at = app("compare", run=foreign)
    assert_clean(at)
    assert any("saved run" in c.value for c in at.caption)
    at.switch_page("pages/requant.py").run()
    assert_clean(at)
    assert at.info and "my_model" in at.info[0].value and "cannot be loaded" in at.info[0].value
    at.switch_page("pages/layers.py").run()  # stored frames still show
    assert_clean(at)
    assert metric(at, f"{views_layers(run)[0]}: worst SQNR")
    Store().delete(foreign)


def views_layers(run):
    from qcal.reporting import views

    return views.layer_names(run.layers)


def test_runs_page_imports_an_exported_run_file():
    from pages._store import export_run_bytes
    from qcal.store.store import Store

    store, run = Store(), current_run()
    copy_id = store.save(run.frames, {**run.meta, "title": "exported elsewhere"})
    data = export_run_bytes(copy_id)
    store.delete(copy_id)  # as if the file came from a colleague's server
    at = app("runs")
    at.file_uploader(key="import_upload").upload("run.sqlite", data).run()
    at.button(key="import_button").click().run()
    assert_clean(at)
    assert copy_id in set(store.list()["id"])
    assert at.success and copy_id in at.success[0].value
    store.delete(copy_id)
    at.file_uploader(key="import_upload").upload("bad.sqlite", b"SQLite format 3\x00 nope").run()
    at.button(key="import_button").click().run()
    assert not at.exception
    assert at.error and "Import failed" in at.error[0].value


def test_a_broken_store_shows_an_error_with_what_to_do(tmp_path, monkeypatch):
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    monkeypatch.setenv("QCAL_STORE", str(bad))
    at = app("runs")
    assert not at.exception
    assert at.error and "QCAL_STORE" in at.error[0].value


def test_an_unknown_run_in_the_url_says_what_to_do_and_back_to_live_recovers():
    at = app("compare", run="0123456789ab")
    assert not at.exception
    assert at.error and "Runs page" in at.error[0].value
    at = app("scales")
    run = current_run()
    at.query_params["run"] = run.id
    at.run()
    assert_clean(at)
    at.sidebar.button(key="leave_run").click().run()
    assert_clean(at)
    assert "run" not in at.query_params
    assert at.sidebar.selectbox(key="param_model").value == "digits_cnn"


def test_an_unknown_layer_in_the_url_falls_back_to_the_first_layer():
    at = app("layers", layer="no_such_layer")
    assert_clean(at)
    assert at.selectbox(key="param_layer").value == at.selectbox(key="param_layer").options[0]


def test_sessions_asking_for_the_same_comparison_share_one_computation(monkeypatch):
    import threading
    import time
    from types import SimpleNamespace

    from pages import _shared

    calls = []

    def fake_find_or_compute(model, schemes, backends, **kwargs):
        calls.append(model)
        time.sleep(0.5)  # long enough for every session to ask while it runs
        return "shared-run", SimpleNamespace(models={})

    monkeypatch.setattr(_shared, "find_or_compute_zoo_run", fake_find_or_compute)
    key = ("digits_mlp", ("per_tensor_affine",), ("onnx",))  # a setup no other test uses
    jobs = []
    sessions = [threading.Thread(target=lambda: jobs.append(_shared._comparison_job(*key)))
                for _ in range(4)]
    for s in sessions:
        s.start()
    for s in sessions:
        s.join()
    assert all(job.done.wait(10) for job in jobs)
    assert len(calls) == 1 and len({id(job) for job in jobs}) == 1
    assert jobs[0].run_id == "shared-run" and jobs[0].error is None
    _shared._comparison_job.clear(*key)


def test_runs_page_downloads_are_a_portable_sqlite_file_and_a_self_contained_report():
    from pages._store import export_run_bytes, report_bytes

    run = current_run()
    assert export_run_bytes(run.id).startswith(b"SQLite format 3\x00")
    html = report_bytes(run.id)
    assert html.lstrip().lower().startswith(b"<!doctype html") and b"digits_cnn" in html
    assert b"<script src=" not in html  # plotly.js inline: opens offline


def test_an_uploaded_checkpoint_that_is_truncated_pickled_code_or_junk_says_which():
    from qcal.checkpoint.explain import example_checkpoint

    whole = example_checkpoint("fbgemm").read_bytes()
    at = app("explain")
    at.radio(key="explain_source").set_value("upload").run()
    for name, data, reason in [
        ("cut.pt", whole[: len(whole) // 2], "cut.pt looks truncated or damaged"),
        ("evil.pt", b"cos\nsystem\n(S'echo hi'\ntR.", "refusing evil.pt: it holds pickled Python objects"),
        ("junk.pth", b"garbage" * 10, "junk.pth is not a torch checkpoint"),
    ]:
        at.file_uploader(key="explain_upload").upload(name, data).run()
        assert not at.exception
        assert len(at.error) == 1 and at.error[0].value.startswith(f"{name} could not be explained: {reason}")


@pytest.mark.parametrize(("query", "named"), [
    ({"scheme": "int4_magic"}, "scheme 'int4_magic'"),
    ({"backends": "fbgemm,tpu,qnnpack"}, "backends 'tpu'"),
    ({"model": "resnet50"}, "model 'resnet50'"),
])
def test_an_unknown_name_in_the_url_is_named_with_the_valid_ones_and_the_page_goes_on(query, named):
    at = app("compare", **query)
    assert not at.exception
    assert len(at.error) == 1, [e.value for e in at.error]
    assert at.error[0].value.startswith(f"The URL asks for {named}, which is not available here; valid: ")
    assert at.selectbox(key="param_scheme").value in _schemes()  # the page still shows a comparison
    at.run()  # the URL now holds the shown selection: no error on the next run
    assert_clean(at)


def test_a_real_backend_this_run_lacks_falls_back_quietly():
    at = app("requant", backend="q31")  # valid name, but the default run has fbgemm and qnnpack only
    assert_clean(at)
    assert at.selectbox(key="param_backend").value in ("fbgemm", "qnnpack")


def test_requant_shows_ort_beside_fbgemm_and_qnnpack_and_offers_the_onnx_file():
    at = app("requant", scheme="fbgemm_default", backend="fbgemm", layer="fc2")
    assert_clean(at)
    beside = next(df for df in at.dataframe if list(df.value.columns) == ["backend", "multiplier", "output"])
    assert list(beside.value["backend"]) == ["fbgemm", "qnnpack", "ort"]
    # the worked fbgemm output in the beside table is the one the page worked out step by step
    assert str(beside.value["output"].iloc[0]) == metric(at, "worked steps").value
    buttons = at.get("download_button")
    assert any("ONNX" in b.proto.label for b in buttons)


def test_compare_offers_the_onnx_file_of_the_picked_scheme():
    """One download per picked scheme (written on the click, by qcal.reporting.views.zoo_onnx_bytes)."""
    at = app(scheme="per_channel_symmetric", backend="fbgemm")
    assert_clean(at)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download per_channel_symmetric as ONNX (QDQ)" in labels
