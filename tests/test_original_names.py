"""Every released CompVis model maps onto ours name for name and shape for shape, without the
original code: ``tests/fixtures/original_names.json.gz`` holds, per released config, its model
section and the name and shape of every tensor the original modules build from it. It was
generated once from the original code (CompVis/latent-diffusion a506df5, taming-transformers
3ba01b2) by ``python benchmarks/compare_original.py CHECKOUT --taming TAMING --names
tests/fixtures/original_names.json.gz``; here our importer translates the same sections, our
models are built on the meta device, and their ``original_names()`` must give exactly those
tensors (the original's 1-d convolutions hold a trailing 1 our linear maps do not)."""

import gzip
import json
from pathlib import Path

import pytest
import torch

from core import DenoiserSpec, FirstStageSpec, load_registry, original
from tasks.importing.original_config import first_stage_config
from tasks.importing.original_ldm import ldm_config
from tasks.importing.task import UNUSED
from tasks.ldm.model import ConditionerUse

DATA = json.loads(gzip.open(Path(__file__).parent / "fixtures" / "original_names.json.gz", "rt").read())
REGISTRY = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})


def _ours(model: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in original.to_original(model).items()}


def _same(ours: dict[str, list[int]], theirs: dict[str, list[int]]) -> None:
    theirs = {key: shape for key, shape in theirs.items() if not key.startswith(UNUSED)}
    assert sorted(ours) == sorted(theirs)
    for key, shape in theirs.items():
        assert ours[key] in (shape, shape[:-1] if shape[-1:] == [1] else shape), key


def _models(model_section: dict) -> dict[str, torch.nn.Module | None]:
    config = {"model": model_section}
    found = first_stage_config(config)
    with torch.device("meta"):
        first = FirstStageSpec.model_validate(found.model, context={"registry": REGISTRY})
        built = {found.prefix: first.build()}
        if not found.prefix:
            return built
        ldm = ldm_config(config, first.model_dump(mode="json"))
        built["model.diffusion_model."] = DenoiserSpec.model_validate(
            ldm.denoiser, context={"registry": REGISTRY}
        ).build()
        uses = [ConditionerUse.model_validate(use, context={"registry": REGISTRY}) for use in ldm.conditioners]
        built["cond_stage_model."] = uses[0].build() if uses else None
    return built


@pytest.mark.parametrize("relative", sorted(DATA["configs"]))
def test_each_released_model_has_the_original_names_and_shapes(relative):
    entry = DATA["configs"][relative]
    models = _models(entry["model"])
    for prefix, digest in entry["parts"].items():
        theirs, model = DATA["shapes"][digest], models[prefix]
        if prefix == "cond_stage_model." and model is not None and not model.original_names():
            # The inpainting model's condition is its first stage: the original stores it twice.
            assert theirs == DATA["shapes"][entry["parts"]["first_stage_model."]] or theirs == {}
            continue
        _same(_ours(model) if model is not None else {}, theirs)


def test_the_data_covers_every_released_config():
    assert len(DATA["configs"]) == 22 and sum(len(shapes) for shapes in DATA["shapes"].values()) > 5000
