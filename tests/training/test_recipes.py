"""--recipe and the flags around it: what resolves to what, which value wins, the schedules."""

from __future__ import annotations

import numpy as np
import pytest

from training.__main__ import build_parser, main, train_config
from training.recipes import BFLOAT16_CPU_FLAGS, DEFAULTS, RECIPES, adapt_to_cpu, cpu_flags, resolve
from training.train import TrainConfig, learning_rate, run_training


def _config(*flags: str) -> tuple[TrainConfig, str]:
    return train_config(build_parser().parse_args(["train", *flags]))


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_recipe_best_resolves_for_lenet(dataset: str) -> None:
    config, line = _config("--model", "lenet", "--dataset", dataset, "--recipe", "best")
    for key, value in RECIPES["best"][("lenet", dataset)].items():
        assert getattr(config, key) == value, key
    assert config.recipe == "best"
    assert line.startswith("recipe best: ") and f"epochs={config.epochs}," in line


def test_explicit_flags_override_the_recipe() -> None:
    config, line = _config(
        "--recipe", "best", "--epochs", "3", "--augment", "albumentations", "--schedule", "plateau"
    )
    recipe = RECIPES["best"][("lenet", "mnist")]
    assert (config.epochs, config.augment, config.schedule) == (3, "albumentations", "plateau")
    assert config.learning_rate == recipe["learning_rate"] and config.epochs != recipe["epochs"]
    assert "epochs=3 (flag)" in line and "augment=albumentations (flag)" in line


def test_without_a_recipe_the_old_defaults_hold() -> None:
    config, line = _config("--model", "mlp")
    for key, value in DEFAULTS.items():
        assert getattr(config, key) == value, key
    assert config.recipe is None and "(default)" in line


def test_augment_alone_means_graph() -> None:
    assert _config("--augment")[0].augment == "graph"
    assert _config("--augment", "albumentations")[0].augment == "albumentations"
    assert TrainConfig(augment=True).augment == "graph"
    assert TrainConfig(augment=False).augment == "none"


def test_recipe_without_settings_for_the_model_is_refused(capsys) -> None:
    assert main(["train", "--model", "mlp", "--recipe", "best", "--no-export"]) == 2
    assert "no settings for mlp on mnist" in capsys.readouterr().err


def test_mirroring_augmentation_is_refused_for_characters(capsys) -> None:
    for dataset in ("mnist", "kmnist"):
        assert main(["train", "--dataset", dataset, "--augment", "flip_shift", "--no-export"]) == 2
        assert f"fashion_mnist only (not {dataset})" in capsys.readouterr().err
    config, line = _config("--dataset", "fashion_mnist", "--augment", "flip_shift")
    assert config.augment == "flip_shift" and "augment=flip_shift (flag)" in line


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    config = TrainConfig(epochs=4, learning_rate=2e-3, schedule="cosine", warmup_epochs=1)
    schedule = learning_rate(config, steps_per_epoch=10)
    values = [float(schedule(step)) for step in (0, 10, 25, 40)]
    assert values[0] == pytest.approx(2e-4)
    assert values[1] == pytest.approx(2e-3)
    assert values[1] > values[2] > values[3] and values[3] == pytest.approx(0.0, abs=1e-9)
    assert learning_rate(TrainConfig(learning_rate=5e-4), 10) == 5e-4


def test_graph_augmentation_with_cosine_trains_and_repeats(tmp_path) -> None:
    def run() -> dict:
        config = TrainConfig(
            model="mlp", epochs=2, limit=1000, test_limit=1000, augment="graph",
            schedule="cosine", warmup_epochs=1, learning_rate=3e-3, export=False, seed=5,
            repository=str(tmp_path / "repo"), runs_dir=str(tmp_path / "runs"),
        )  # fmt: skip
        return run_training(config).metrics

    first, second = run(), run()
    assert first["accuracy"] > 0.5  # 2 epochs of 900 augmented images: far above chance (0.1)
    assert first["accuracy"] == second["accuracy"]
    np.testing.assert_array_equal(first["confusion_matrix"], second["confusion_matrix"])


def test_demo_recipe_is_cosine_over_the_demo_epochs() -> None:
    config, line = _config("--recipe", "demo", "--epochs", "4")
    assert (config.epochs, config.schedule, config.augment) == (4, "cosine", "none")
    assert config.learning_rate == RECIPES["demo"][("lenet", "mnist")]["learning_rate"]
    assert line.startswith("recipe demo: epochs=4 (flag)")


def test_speed_and_shape_flags_reach_the_config() -> None:
    config, line = _config(
        "--model", "resnet50", "--dataset", "fashion_mnist", "--precision", "mixed_bfloat16",
        "--jit-compile", "--resnet-stem", "cifar", "--resnet-side", "48", "--time-budget", "5",
    )  # fmt: skip
    assert (config.precision, config.jit_compile) == ("mixed_bfloat16", True)
    assert (config.resnet_stem, config.resnet_side, config.time_budget_minutes) == ("cifar", 48, 5)
    assert "precision=mixed_bfloat16 (flag)" in line and "jit_compile=True (flag)" in line
    default, _ = _config("--model", "resnet50")
    assert (default.precision, default.jit_compile) == ("float32", False)
    assert (default.resnet_stem, default.resnet_side, default.time_budget_minutes) == (
        "imagenet", 32, None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig(precision="float16")


def test_resnet50_best_recipe_trains_mixed_bfloat16_where_the_cpu_has_it() -> None:
    config, line = _config("--model", "resnet50", "--dataset", "fashion_mnist", "--recipe", "best")
    flags = cpu_flags()
    native = flags is None or bool(flags & set(BFLOAT16_CPU_FLAGS))  # unknown: the recipe's
    for key, value in RECIPES["best"][("resnet50", "fashion_mnist")].items():
        if key != "precision":
            assert getattr(config, key) == value, key
    assert (config.precision, config.resnet_side, config.resnet_stem) == (
        "mixed_bfloat16" if native else "float32", 32, "imagenet",
    )  # fmt: skip
    assert ("precision=mixed_bfloat16," if native else "precision=float32 (this CPU),") in line
    # LeNet's recipe leaves the new settings at their defaults.
    lenet, _ = _config("--model", "lenet", "--recipe", "best")
    assert (lenet.precision, lenet.jit_compile) == ("float32", False)


def test_a_cpu_without_native_bfloat16_trains_the_recipe_in_float32() -> None:
    def resolved(flags: set[str] | None, *explicit: str) -> tuple[str, str, str | None]:
        settings, sources = resolve(
            "best", "resnet50", "fashion_mnist", {"precision": explicit[0] if explicit else None}
        )
        note = adapt_to_cpu(settings, sources, flags)
        return settings["precision"], sources["precision"], note

    avx2_only = {"fpu", "sse2", "avx2", "fma"}
    precision, source, note = resolved(avx2_only)
    assert (precision, source) == ("float32", "this CPU")
    assert note is not None and "no native bfloat16" in note
    for native in ({"avx2", "avx512_bf16"}, {"amx_bf16"}):
        assert resolved(native) == ("mixed_bfloat16", "recipe", None)
    assert resolved(None) == ("mixed_bfloat16", "recipe", None)  # flags unknown: keep the recipe
    # Asked for explicitly, it is kept, with a warning.
    precision, source, note = resolved(avx2_only, "mixed_bfloat16")
    assert (precision, source) == ("mixed_bfloat16", "flag")
    assert note is not None and note.startswith("warning:")
    assert resolved(avx2_only, "float32") == ("float32", "flag", None)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") is None


@pytest.mark.parametrize(("preset", "enabled"), [(None, True), ("0", False)])
def test_training_turns_onednn_on_unless_told_otherwise(preset: str | None, enabled: bool) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if preset is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = preset
    probe = (
        "import training, tensorflow\n"
        "from tensorflow.python.util import _pywrap_util_port as port\n"
        "print(port.IsMklEnabled())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(enabled)
