"""qcal.zoo.zoo: registry, seeded training, the on-disk cache, accuracies, users' models."""

import copy
import dataclasses
import json
import textwrap
import warnings

import pytest
import torch
from torch import nn
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from qcal._torch_warnings import silence
from qcal.zoo import zoo
from qcal.zoo.datasets import digits_splits
from qcal.zoo.training import TrainConfig

DIGITS = [n for n in zoo.names() if zoo.info(n).task == "digits"]
MODELS_AS_SHIPPED = dict(zoo.MODELS)


@pytest.fixture
def tmp_data(tmp_path, monkeypatch):
    monkeypatch.setenv("QCAL_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(autouse=True)
def quick_mlp(monkeypatch):
    """The cache tests retrain digits_mlp often: a 3-epoch recipe keeps them fast."""
    entry = zoo.info("digits_mlp")
    monkeypatch.setitem(zoo.MODELS, "digits_mlp", dataclasses.replace(entry, train=TrainConfig(epochs=3)))


@pytest.fixture
def train_calls(monkeypatch):
    """Counts how often the zoo trains (wrapping the real trainer)."""
    calls = []
    real = zoo.train_classifier

    def counting(model, *args, **kwargs):
        calls.append(type(model).__name__)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(zoo, "train_classifier", counting)
    return calls


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- registry


def test_registry_names_and_entries():
    assert zoo.names() == ["digits_cnn", "digits_mobilenet", "digits_resnet", "digits_mlp",
                           "digits_encoder", "resnet18_like", "mobilenet_v2_like"]
    entry = zoo.info("digits_cnn")
    assert entry.input_shape == (1, 8, 8) and entry.data == "digits" and entry.train is not None
    assert zoo.info("resnet18_like").input_shape == (3, 224, 224)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.name = "x"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown zoo model 'resnet50'; valid names: digits_cnn, digits_mobilenet"):
        zoo.load("resnet50")


# ---------------------------------------------------------------- training and the cache


def test_training_is_deterministic_for_a_fixed_seed(tmp_path):
    a = zoo.load("digits_mlp", data_dir=tmp_path / "a")
    b = zoo.load("digits_mlp", data_dir=tmp_path / "b")
    assert _same_weights(a, b)
    assert not _same_weights(a, zoo.info("digits_mlp").factory())


def test_second_load_reads_the_cache_without_retraining(tmp_data, train_calls):
    first = zoo.load("digits_mlp")
    weights = tmp_data / "zoo" / "digits_mlp.pt"
    record = json.loads((tmp_data / "zoo" / "digits_mlp.json").read_text())
    mtime = weights.stat().st_mtime_ns
    second = zoo.load("digits_mlp")
    assert train_calls == ["DigitsMLP"]
    assert weights.stat().st_mtime_ns == mtime
    assert _same_weights(first, second) and first is not second and not second.training
    assert record["accuracy"] == zoo.accuracy("digits_mlp") and record["train_seconds"] > 0
    assert sorted(p.name for p in (tmp_data / "zoo").iterdir()) == ["digits_mlp.json", "digits_mlp.pt"]


def test_deleted_cache_is_regenerated(tmp_data, train_calls):
    reference = zoo.load("digits_mlp")
    (tmp_data / "zoo" / "digits_mlp.pt").unlink()
    again = zoo.load("digits_mlp")
    assert train_calls == ["DigitsMLP", "DigitsMLP"] and _same_weights(reference, again)
    assert (tmp_data / "zoo" / "digits_mlp.pt").is_file()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_keys"])
def test_corrupt_cache_is_regenerated_and_rewritten_readable(tmp_data, train_calls, damage):
    reference = zoo.load("digits_mlp")
    weights = tmp_data / "zoo" / "digits_mlp.pt"
    if damage == "garbage":
        weights.write_bytes(b"not a torch file")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        torch.save({"fc1.weight": torch.zeros(3)}, weights)
    again = zoo.load("digits_mlp")
    assert len(train_calls) == 2 and _same_weights(reference, again)
    reread = torch.load(weights, weights_only=True)["state_dict"]
    assert all(torch.equal(reread[k], v) for k, v in reference.state_dict().items())


@pytest.mark.parametrize("change", ["zoo_version", "recipe"])
def test_cache_from_another_version_or_recipe_is_retrained(tmp_data, train_calls, monkeypatch, change):
    zoo.load("digits_mlp")
    if change == "zoo_version":
        monkeypatch.setattr(zoo, "ZOO_VERSION", zoo.ZOO_VERSION + 1)
    else:
        entry = zoo.info("digits_mlp")
        monkeypatch.setitem(zoo.MODELS, "digits_mlp", dataclasses.replace(entry, train=TrainConfig(epochs=2)))
    zoo.load("digits_mlp")
    assert len(train_calls) == 2
    assert json.loads((tmp_data / "zoo" / "digits_mlp.json").read_text())["zoo_version"] == zoo.ZOO_VERSION


def test_concurrent_first_loads_train_once(tmp_data, train_calls):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        models = list(pool.map(lambda _: zoo.load("digits_mlp"), range(3)))
    assert train_calls == ["DigitsMLP"]
    assert all(_same_weights(models[0], m) for m in models[1:])


def test_unwritable_cache_still_returns_the_model_with_a_warning(tmp_data, monkeypatch):
    def refuse(path, payload):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(zoo, "_atomic_write", refuse)
    with pytest.warns(UserWarning, match=r"could not cache .*digits_mlp\.pt .*QCAL_DATA_DIR"):
        model = zoo.load("digits_mlp")
    assert isinstance(model, nn.Module) and not (tmp_data / "zoo" / "digits_mlp.pt").exists()


def test_lost_accuracy_record_is_rescored_without_retraining(tmp_data, train_calls):
    zoo.load("digits_mlp")
    record = tmp_data / "zoo" / "digits_mlp.json"
    accuracy = json.loads(record.read_text())["accuracy"]
    record.write_text("{ truncated")
    assert zoo.accuracy("digits_mlp") == accuracy
    assert train_calls == ["DigitsMLP"]
    rescored = json.loads(record.read_text())
    assert rescored["accuracy"] == accuracy and rescored["train_seconds"] > 0


def test_data_dir_argument_overrides_the_environment(tmp_data, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    zoo.load("digits_mlp", data_dir=other)
    assert (other / "zoo" / "digits_mlp.pt").is_file()
    assert not (tmp_data / "zoo").exists()


def test_progress_reports_fractions_up_to_one(tmp_data):
    seen = []
    zoo.load("digits_mlp", progress=lambda f, msg: seen.append((f, msg)))
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert "training" in seen[0][1]
    seen.clear()
    zoo.load("digits_mlp", progress=lambda f, msg: seen.append((f, msg)))
    assert seen == [(1.0, "digits_mlp: loaded from cache")]


# ---------------------------------------------------------------- accuracy (uses the real data/ cache)


@pytest.mark.parametrize("name", DIGITS)
def test_digits_models_reach_95_percent_on_held_out_digits(name, monkeypatch):
    monkeypatch.setitem(zoo.MODELS, "digits_mlp", MODELS_AS_SHIPPED["digits_mlp"])
    acc = zoo.accuracy(name)
    model = zoo.load(name)
    x, y = digits_splits().test
    assert acc >= 0.95
    assert zoo.evaluate(model, x, y) == acc


def test_benchmark_models_load_with_random_weights_and_no_accuracy():
    assert zoo.accuracy("resnet18_like") is None
    with pytest.raises(ValueError, match="benchmark model"):
        zoo.metadata("mobilenet_v2_like")


def test_evaluate_counts_argmax_hits():
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    model = nn.Identity()
    assert zoo.evaluate(model, logits, torch.tensor([1, 0, 0, 0])) == 0.5


# ---------------------------------------------------------------- digits_mobilenet's purpose


def _folded_channel_absmax(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    w = conv.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1)
    return w.detach().abs().flatten(1).amax(dim=1)


def _fx_int8_accuracy(model: nn.Module, per_channel: bool) -> float:
    with warnings.catch_warnings():
        silence()  # pytest resets filters per test; torch's deprecation notices are noise here
        return _fx_int8_accuracy_noisy(model, per_channel)


def _fx_int8_accuracy_noisy(model: nn.Module, per_channel: bool) -> float:
    weight = (
        PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        if per_channel
        else MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    )
    act = MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True)
    splits = digits_splits()
    prepared = prepare_fx(copy.deepcopy(model), QConfigMapping().set_global(QConfig(activation=act, weight=weight)),
                          example_inputs=(splits.calib[0][:1],))
    with torch.no_grad():
        prepared(splits.calib[0])
    return zoo.evaluate(convert_fx(prepared), *splits.test)


def test_digits_mobilenet_depthwise_folded_ranges_differ_by_over_50x():
    model = zoo.load("digits_mobilenet")
    for block in model.blocks:
        absmax = _folded_channel_absmax(block.depthwise[0], block.depthwise[1])
        assert float(absmax.max() / absmax.min()) > 50


def test_digits_mobilenet_per_tensor_weights_lose_accuracy_per_channel_holds(monkeypatch):
    monkeypatch.setattr(torch.backends.quantized, "engine", "fbgemm")
    model = zoo.load("digits_mobilenet")
    fp32 = zoo.accuracy("digits_mobilenet")
    per_channel, per_tensor = _fx_int8_accuracy(model, True), _fx_int8_accuracy(model, False)
    assert fp32 - per_channel < 0.015
    assert fp32 - per_tensor > 0.10


# ---------------------------------------------------------------- users' models


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        from torch import nn
        def make():
            return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)
            def forward(self, x):
                return self.fc(x)
        NOT_CALLABLE = 3
        def not_a_module():
            return "model"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_user_model_from_factory_and_class_with_state_dict(user_module):
    model = zoo.load_user_model("my_models:make")
    assert isinstance(model, nn.Sequential) and not model.training
    torch.save(model.state_dict(), user_module / "w.pt")
    again = zoo.load_user_model("my_models:make", user_module / "w.pt")
    assert _same_weights(model, again)
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, user_module / "ckpt.pt")
    assert _same_weights(model, zoo.load_user_model("my_models:make", user_module / "ckpt.pt"))
    assert isinstance(zoo.load_user_model("my_models:Net"), nn.Module)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("my_models", ValueError, "must look like 'package.module:factory'"),
        ("no_such_module_xyz:make", ValueError, "module 'no_such_module_xyz' not found"),
        ("my_models:mkae", ValueError, "has no attribute 'mkae'; callables there include: Net, make"),
        ("my_models:NOT_CALLABLE", TypeError, "is a int, not a callable factory"),
        ("my_models:not_a_module", TypeError, "returned a str, not a torch.nn.Module"),
    ],
)
def test_user_model_errors_are_clear(user_module, spec, error, message):
    with pytest.raises(error, match=message):
        zoo.load_user_model(spec)


def test_user_state_dict_mismatch_lists_keys_and_shapes(user_module):
    torch.save({"fc.weight": torch.zeros(2, 5), "extra": torch.zeros(1)}, user_module / "bad.pt")
    with pytest.raises(ValueError, match=r"1 missing \(e\.g\. fc\.bias\); 1 unexpected \(e\.g\. extra\); "
                                         r"1 with other shapes \(e\.g\. fc\.weight: file \(2, 5\) vs model \(2, 4\)\)"):
        zoo.load_user_model("my_models:Net", user_module / "bad.pt")


class _Sneaky:
    """Any non-tensor object: weights_only loading must refuse to build it."""


def test_user_state_dict_with_pickled_objects_is_refused(user_module):
    torch.save({"fc.weight": torch.zeros(2, 4), "fc.bias": _Sneaky()}, user_module / "sneaky.pt")
    with pytest.raises(ValueError, match="refused to load"):
        zoo.load_user_model("my_models:Net", user_module / "sneaky.pt")
