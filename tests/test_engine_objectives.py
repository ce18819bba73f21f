"""The engine with an objective of two models, each with its own optimiser (as an autoencoder
and its discriminator), called in process."""

import json

import torch
from torch import nn

from core import load_registry
from tasks.autoencoder.train import AutoencoderObjective
from tasks.cli.catalog import context, spec_models
from tasks.engine.objective import Objective
from tasks.engine.trainer import train
from tasks.runs.checkpoint import read_state
from tasks.runs.validation import validate_task
from tests.conftest import TINY_AE


class WithCritic(AutoencoderObjective):
    """The autoencoder plus a critic scoring reconstructions, trained in turn each step."""

    def __init__(self, spec, dataset):
        super().__init__(spec, dataset)
        self.nets["critic"] = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))

    def optimizers(self):
        return {**super().optimizers(), "critic": self.spec.train.optimizer.model_copy(update={"name": "sgd"})}

    def loss(self, name, batch, step):
        if name == "first_stage":
            loss, terms = super().loss(name, batch, step)
            fooled = -self.nets["critic"](self.nets["first_stage"](batch["image"])[0]).mean()
            return loss + 0.01 * fooled, {**terms, "fooled": fooled.detach()}
        with torch.no_grad():
            fake = self.nets["first_stage"](batch["image"])[0]
        real, made = self.nets["critic"](batch["image"]), self.nets["critic"](fake)
        hinge = torch.relu(1 - real).mean() + torch.relu(1 + made).mean()
        return hinge, {"hinge": hinge.detach()}


def run(tmp_path, name, steps, resume=False, build=WithCritic):
    registry = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    data = {**TINY_AE, "name": name, "train": {**TINY_AE["train"], "max_steps": steps, "checkpoint_every": 100}}
    spec = validate_task(data, spec_models(), registry)
    return train(spec, context(registry, tmp_path, resume), build)


def test_every_model_and_optimiser_is_checkpointed_and_resumed_exactly(tmp_path):
    whole = read_state(run(tmp_path, "whole", 6))
    run(tmp_path, "split", 3)
    split = read_state(run(tmp_path, "split", 6, resume=True))
    assert set(whole.models) == {"first_stage", "critic"} == set(whole.optimizers)
    for name in whole.models:
        for key, value in whole.models[name].items():
            assert torch.equal(value, split.models[name][key]), (name, key)
        for key, value in whole.ema[name].items():
            assert torch.equal(value, split.ema[name][key]), (name, key)
    assert whole.optimizers["critic"]["param_groups"][0]["momentum"] == 0.0, "the critic's SGD"
    assert int(whole.optimizers["first_stage"]["state"][0]["step"]) == 6
    lines = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/critic/hinge", "loss/first_stage/fooled", "grad_norm/critic", "lr/critic"} <= set(lines[0])


class Noisy(AutoencoderObjective):
    """Draws noise from the global RNG in its loss, as diffusion objectives do."""

    def loss(self, name, batch, step):
        batch = {**batch, "image": batch["image"] + 0.1 * torch.randn_like(batch["image"])}
        return super().loss(name, batch, step)


def test_data_workers_and_global_rng_give_the_same_run_as_the_main_process(tmp_path):
    assert issubclass(Noisy, Objective)
    plain = read_state(run(tmp_path, "plain", 4, build=Noisy))
    registry = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    data = {**TINY_AE, "name": "workers", "train": {**TINY_AE["train"], "max_steps": 4, "num_workers": 2}}
    spec = validate_task(data, spec_models(), registry)
    workers = read_state(train(spec, context(registry, tmp_path), Noisy))
    for key, value in plain.models["first_stage"].items():
        assert torch.equal(value, workers.models["first_stage"][key]), key
