"""Contract tests a component must pass; the same ones our own components run.

A plugin author subclasses the contract for the component's kind in a pytest module (the
class name must start with ``Test``) and says how to build it and what to feed it::

    import torch
    from core.testing import ConditionerContract
    from ldm_plugin_onehot import OneHot

    class TestOneHot(ConditionerContract):
        component = OneHot
        params = {"num_classes": 10, "dim": 16}

        def example(self, batch_size, generator):
            return torch.randint(0, 10, (batch_size,), generator=generator)

Each ``test_*`` method then checks one promise of the interface. Outside pytest,
``ConditionerContract``-derived instances have :meth:`ComponentContract.check_all`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import ValidationError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from core.conditioning import PARTS, Conditioning
from core.interfaces import Component, Conditioner, Denoiser, FirstStage
from core.loader import load_registry
from core.params import Params

SEED = 1234


def _devices() -> list[torch.device]:
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def _move(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Tensors (also inside lists, tuples and conditionings) moved to ``device``; floating ones also
    cast to ``dtype``. Other values unchanged."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype if dtype and value.is_floating_point() else None)
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v, device, dtype) for v in value)
    if isinstance(value, Conditioning):
        return Conditioning(**{part: _move(t, device, dtype) for part, t in value._parts().items()})
    return value


class ComponentContract:
    """Checks every module-based component owes: params, seeding, dtype, device, state dict.

    Subclasses set ``component`` and ``params`` (a dict or a ``Params`` instance) and
    implement :meth:`inputs` and :meth:`outputs`.
    """

    component: ClassVar[type[Component]]
    params: ClassVar[dict[str, Any] | Params] = {}

    def context(self) -> dict[str, Any]:
        """Validation context: the registry of every installed plugin, so that params may name
        other components (e.g. an autoencoder's regulariser)."""
        cls = type(self)
        if "_registry" not in cls.__dict__:
            cls._registry = load_registry()
        return {"registry": cls._registry}

    def validated_params(self) -> Params:
        """``params`` validated by the component's own ``Params``."""
        if isinstance(self.params, Params):
            return self.params
        return self.component.Params.model_validate(self.params, context=self.context())

    def build(self, seed: int = SEED) -> Component:
        """The component built under ``seed``, in eval mode (no dropout noise in comparisons)."""
        torch.manual_seed(seed)
        module = self.component(self.validated_params())
        return module.eval() if isinstance(module, torch.nn.Module) else module

    def inputs(self, batch_size: int, generator: torch.Generator) -> Any:
        """A batch of ``batch_size`` inputs, drawn from ``generator``."""
        raise NotImplementedError

    def outputs(self, module: Component, inputs: Any) -> dict[str, Tensor]:
        """Every tensor the component produces for ``inputs``, by a name used in messages."""
        raise NotImplementedError

    def run(
        self,
        module: Component,
        batch_size: int = 2,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> dict[str, Tensor]:
        """``outputs`` for a seeded batch moved to ``device`` (floating inputs cast to ``dtype``)."""
        generator = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            return self.outputs(module, _move(self.inputs(batch_size, generator), torch.device(device), dtype))

    def test_params_forbid_unknown_keys_and_round_trip(self) -> None:
        cls = self.component.Params
        assert issubclass(cls, Params), f"{self.component.__name__}.Params must derive from core.Params"
        params = self.validated_params()
        again = cls.model_validate(params.model_dump(), context=self.context())
        assert again == params, "params do not survive model_dump/model_validate"
        try:
            cls.model_validate({**params.model_dump(), "surely_not_a_param": 1}, context=self.context())
        except ValidationError:
            pass
        else:
            raise AssertionError(f"{cls.__qualname__} accepts unknown keys; derive it from core.Params")

    def test_same_seed_same_weights_and_outputs(self) -> None:
        a, b = self.build(), self.build()
        for key, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[key]), f"weight {key!r} differs between two builds under one seed"
        got = self.run(b)
        for name, value in self.run(a).items():
            assert torch.equal(value, got[name]), f"output {name!r} differs between two builds under one seed"

    def test_state_dict_round_trip_through_safetensors(self) -> None:
        source, target = self.build(seed=SEED), self.build(seed=SEED + 1)
        state = {key: value.contiguous() for key, value in source.state_dict().items()}
        target.load_state_dict(load_safetensors(save_safetensors(state)), strict=True)
        expected, got = self.run(source), self.run(target)
        for name, value in expected.items():
            assert torch.equal(value, got[name]), f"output {name!r} differs after a safetensors round trip"

    def test_dtype_follows_the_module(self) -> None:
        module = self.build().to(torch.float64)
        for name, value in self.run(module, dtype=torch.float64).items():
            if value.is_floating_point():
                assert value.dtype == torch.float64, f"output {name!r} is {value.dtype} from a float64 module and input"

    def test_device_follows_the_input(self) -> None:
        for device in _devices():
            module = self.build().to(device)
            for name, value in self.run(module, device=device).items():
                assert value.device.type == device.type, f"output {name!r} is on {value.device}, input on {device}"

    def check_all(self) -> None:
        """Run every ``test_*`` check (for use outside pytest); the first failure raises."""
        for name in sorted(dir(self)):
            if name.startswith("test_"):
                getattr(self, name)()


class ConditionerContract(ComponentContract):
    """The contract of :class:`core.Conditioner`; implement :meth:`example`."""

    component: ClassVar[type[Conditioner]]

    def example(self, batch_size: int, generator: torch.Generator) -> Any:
        """A batch of the field the conditioner reads (a tensor with B first, or a list of B)."""
        raise NotImplementedError

    def inputs(self, batch_size: int, generator: torch.Generator) -> Any:
        return self.example(batch_size, generator)

    def outputs(self, module: Conditioner, inputs: Any) -> dict[str, Tensor]:
        cond = module(inputs)
        assert isinstance(cond, Conditioning), f"forward returned {type(cond).__name__}, not core.Conditioning"
        null = module.unconditional(cond)
        found = {part: getattr(cond, part) for part in PARTS if getattr(cond, part) is not None}
        found.update(
            {f"unconditional {part}": getattr(null, part) for part in PARTS if getattr(null, part) is not None}
        )
        return found

    def test_reads_a_field(self) -> None:
        field = self.component.reads(self.validated_params())
        assert isinstance(field, str) and field, f"reads() must name an example field, got {field!r}"

    def test_output_parts_and_widths_as_declared(self) -> None:
        declared = self.component.produces(self.validated_params())
        module = self.build()
        for batch_size in (1, 3):
            cond = module(self.example(batch_size, torch.Generator().manual_seed(SEED)))
            wrong = declared.mismatches(cond)
            assert not wrong, f"{self.component.__name__} {'; '.join(wrong)} (produces() and forward() must agree)"
            assert cond.batch_size == batch_size, f"batch of {batch_size} gave batch size {cond.batch_size}"

    def test_unconditional_is_shaped_like_the_condition(self) -> None:
        module = self.build()
        cond = module(self.example(3, torch.Generator().manual_seed(SEED)))
        null = module.unconditional(cond)
        assert isinstance(null, Conditioning), "unconditional() must return core.Conditioning"
        for part in PARTS:
            mine, other = getattr(cond, part), getattr(null, part)
            assert (mine is None) == (other is None), f"unconditional() and forward disagree on part {part!r}"
            if mine is not None:
                assert other.shape == mine.shape, (
                    f"unconditional {part} is {tuple(other.shape)}, condition {tuple(mine.shape)}"
                )
                assert other.dtype == mine.dtype, f"unconditional {part} is {other.dtype}, condition {mine.dtype}"
                assert torch.isfinite(other).all(), f"unconditional {part} is not finite"


class FirstStageContract(ComponentContract):
    """The contract of :class:`core.FirstStage`: latent and image shapes as declared."""

    component: ClassVar[type[FirstStage]]
    image_size: ClassVar[int] = 16

    def inputs(self, batch_size: int, generator: torch.Generator) -> Tensor:
        shape = self.component.latent_shape(self.validated_params())
        return (
            torch.rand(batch_size, shape.image_channels, self.image_size, self.image_size, generator=generator) * 2 - 1
        )

    def outputs(self, module: FirstStage, inputs: Tensor) -> dict[str, Tensor]:
        latent = module.encode(inputs)
        return {"latent": latent, "image": module.decode(latent)}

    def test_shapes_as_declared(self) -> None:
        shape = self.component.latent_shape(self.validated_params())
        side = self.image_size // shape.factor
        got = self.run(self.build(), batch_size=3)
        assert tuple(got["latent"].shape) == (3, shape.channels, side, side), (
            f"latent_shape() declares {shape}, encode gave {tuple(got['latent'].shape)} for {self.image_size}px images"
        )
        assert tuple(got["image"].shape) == (3, shape.image_channels, self.image_size, self.image_size), (
            f"decode gave {tuple(got['image'].shape)}"
        )

    def test_moments_give_the_latent(self) -> None:
        module = self.build()
        x = self.inputs(2, torch.Generator().manual_seed(SEED))
        with torch.no_grad():
            moments = module.moments(x)
            assert torch.equal(moments, module.moments(x)), (
                "moments must be deterministic in eval mode (a cache stores them)"
            )
            latent = module.latent_from_moments(moments)
        assert latent.shape == module.encode(x).shape, (
            f"latent_from_moments gave {tuple(latent.shape)}, encode {tuple(module.encode(x).shape)}"
        )


class DenoiserContract(ComponentContract):
    """The contract of :class:`core.Denoiser`: the output is shaped like x, each sample depends
    only on its own input, and the timestep and every condition part reach the output.

    Set ``latent_channels`` and override :meth:`condition` to give the parts the denoiser
    was built for. Weights that are exactly zero after building (zero-initialised last
    layers, as in the paper's UNet) are filled with small seeded noise, so the checks see a
    function that is not constant.
    """

    component: ClassVar[type[Denoiser]]
    latent_channels: ClassVar[int] = 4
    latent_size: ClassVar[int] = 8

    def condition(self, batch_size: int, generator: torch.Generator) -> Conditioning:
        """The conditioning the denoiser was built for (none by default)."""
        return Conditioning()

    def build(self, seed: int = SEED) -> Denoiser:
        module = super().build(seed)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for weight in module.parameters():
                if weight.numel() and not weight.any():
                    weight.copy_(torch.randn(weight.shape, generator=generator) * 0.05)
        return module

    def inputs(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Conditioning]:
        x = torch.randn(batch_size, self.latent_channels, self.latent_size, self.latent_size, generator=generator)
        t = torch.rand(batch_size, generator=generator) * 999
        return x, t, self.condition(batch_size, generator)

    def outputs(self, module: Denoiser, inputs: tuple[Tensor, Tensor, Conditioning]) -> dict[str, Tensor]:
        return {"output": module(*inputs)}

    def test_output_is_shaped_like_x(self) -> None:
        got = self.run(self.build(), batch_size=3)["output"]
        assert tuple(got.shape) == (3, self.latent_channels, self.latent_size, self.latent_size), tuple(got.shape)
        assert self.build().prediction in ("eps", "x0", "v")

    def test_each_sample_depends_only_on_its_own_input(self) -> None:
        module = self.build()
        x, t, cond = self.inputs(3, torch.Generator().manual_seed(SEED))
        first = Conditioning(**{part: value[:1] for part, value in cond._parts().items()})
        with torch.no_grad():
            together, alone = module(x, t, cond)[:1], module(x[:1], t[:1], first)
        assert torch.allclose(together, alone, atol=1e-5), "a sample's output changes with the rest of its batch"

    def test_timestep_and_every_condition_part_reach_the_output(self) -> None:
        module = self.build()
        x, t, cond = self.inputs(2, torch.Generator().manual_seed(SEED))
        with torch.no_grad():
            base = module(x, t, cond)
            assert not torch.allclose(module(x, t + 100, cond), base), "the output ignores the timestep"
            for part, value in cond._parts().items():
                changed = Conditioning(**{**cond._parts(), part: value + 1})
                assert not torch.allclose(module(x, t, changed), base), f"the output ignores the condition's {part}"


__all__ = ["ComponentContract", "ConditionerContract", "DenoiserContract", "FirstStageContract"]
