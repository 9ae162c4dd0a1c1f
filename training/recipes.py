"""Named training recipes: fixed, measured combinations of the trainer's settings.

`python -m training train --model lenet --dataset mnist --recipe best` takes the recipe's values
for the settings below; a flag given on the command line wins over the recipe, and the trainer's
defaults fill the rest. How each recipe was chosen (on the validation split, never the test set)
and what it scores: benchmarks/RESULTS.md, "Training quality".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The settings a recipe may fix, with the trainer's defaults when neither flag nor recipe does.
DEFAULTS: dict[str, Any] = {
    "epochs": 5,
    "batch_size": 128,
    "learning_rate": 1e-3,
    "optimizer": "adam",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "augment": "none",
    "schedule": "constant",
    "warmup_epochs": 0,
    "patience": 3,
    "precision": "float32",
    "jit_compile": False,
    "resnet_side": 32,
    "resnet_stem": "imagenet",
}

# recipe name -> (model, dataset) -> settings. Patience as long as the run: with a decaying
# schedule the last epochs are the best ones, early stopping would cut them off.
#: LeNet's best recipe; the same settings won on MNIST and on Fashion-MNIST (validation split).
_LENET_BEST: dict[str, Any] = {
    "epochs": 30,
    "batch_size": 128,
    "learning_rate": 3e-3,
    "augment": "graph",
    "schedule": "cosine",
    "warmup_epochs": 1,
    "patience": 30,
}

#: ResNet50 from scratch on Fashion-MNIST within 90 minutes of this project's 2-core CPU:
#: mixed_bfloat16 was the fastest setting measured (XLA and thread settings did not pay), 20
#: epochs of about 4 minutes each fit the budget with room for a neighbour's load; the 32x32
#: ImageNet stem because the larger side (about 4x the time per image at 64) and the CIFAR stem
#: (about 10x) would leave too few epochs. benchmarks/RESULTS.md, "ResNet50 at CPU speed".
_RESNET50_FASHION_BEST: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 128,
    "learning_rate": 1e-3,
    "augment": "graph",
    "schedule": "cosine",
    "warmup_epochs": 1,
    "patience": 20,
    "precision": "mixed_bfloat16",
    "jit_compile": False,
    "resnet_side": 32,
    "resnet_stem": "imagenet",
}

RECIPES: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
    "best": {
        ("lenet", "mnist"): _LENET_BEST,
        ("lenet", "fashion_mnist"): _LENET_BEST,
        ("resnet50", "fashion_mnist"): _RESNET50_FASHION_BEST,
    },
    # `make demo`'s budget (8 epochs): the same time as the constant rate, a better model.
    "demo": {
        ("lenet", "mnist"): {
            "epochs": 8,
            "learning_rate": 3e-3,
            "schedule": "cosine",
            "warmup_epochs": 1,
        },
    },
}


#: /proc/cpuinfo flags of native bfloat16 arithmetic. Without one, bfloat16 is emulated: ResNet50
#: then trained 10 to 16x slower under mixed_bfloat16 than in float32 (benchmarks/RESULTS.md).
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags (Linux); None where they cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def adapt_to_cpu(
    settings: dict[str, Any], sources: dict[str, str], flags: set[str] | None
) -> str | None:
    """A recipe's mixed_bfloat16 becomes float32 on a CPU known to lack native bfloat16 (in
    place; its source becomes "this CPU"). Returns a line saying so, or warning that an explicit
    ``--precision mixed_bfloat16`` will be slow there; None when there is nothing to say."""
    if settings.get("precision") != "mixed_bfloat16" or flags is None:
        return None
    if flags & set(BFLOAT16_CPU_FLAGS):
        return None
    if sources["precision"] == "flag":
        return (
            "warning: this CPU has no native bfloat16 (none of "
            f"{', '.join(BFLOAT16_CPU_FLAGS)}): --precision mixed_bfloat16 is emulated, "
            "several times slower than float32"
        )
    settings["precision"], sources["precision"] = "float32", "this CPU"
    return (
        "precision float32 instead of the recipe's mixed_bfloat16: this CPU has no native "
        f"bfloat16 (none of {', '.join(BFLOAT16_CPU_FLAGS)}), where it is emulated and several "
        "times slower (--precision mixed_bfloat16 forces it)"
    )


class UnknownRecipe(ValueError):
    """No recipe of that name for that model and dataset."""


def resolve(
    recipe: str | None, model: str, dataset: str, explicit: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, where each came from: "flag", "recipe" or "default").

    `explicit` holds the command line's values, None where a flag was not given.
    """
    chosen: dict[str, Any] = {}
    if recipe is not None:
        table = RECIPES.get(recipe)
        if table is None:
            raise UnknownRecipe(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
        chosen = table.get((model, dataset), {})
        if not chosen:
            known = ", ".join(f"{m} on {d}" for m, d in table)
            raise UnknownRecipe(
                f"recipe {recipe!r} has no settings for {model} on {dataset}; it has {known}"
            )
    settings: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, default in DEFAULTS.items():
        if explicit.get(key) is not None:
            settings[key], sources[key] = explicit[key], "flag"
        elif key in chosen:
            settings[key], sources[key] = chosen[key], "recipe"
        else:
            settings[key], sources[key] = default, "default"
    return settings, sources


def describe(recipe: str | None, settings: dict[str, Any], sources: dict[str, str]) -> str:
    """One line for the start of training: every resolved setting and where it came from."""
    parts = []
    for key, value in settings.items():
        mark = "" if sources[key] == "recipe" else f" ({sources[key]})"
        parts.append(f"{key}={value}{mark}")
    head = f"recipe {recipe}" if recipe else "settings"
    return f"{head}: " + ", ".join(parts)
