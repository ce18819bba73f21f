"""The built-in components, registered through entry point ``builtin`` in group ``ldm``.

This package imports only ``core``: it is a plugin like any third party's.
"""

from core import hookimpl


@hookimpl
def ldm_register(registry):
    """Register every built-in component under the name specs use for it."""
    from plugins.autoencoder import Autoencoder
    from plugins.box_map import BoxMap
    from plugins.class_label import ClassLabel
    from plugins.clip_text import ClipTextEncoder
    from plugins.digits import Digits
    from plugins.frozen_text_encoder import FrozenTextEncoder
    from plugins.identity import IdentityFirstStage
    from plugins.image_folder import ImageFolder
    from plugins.inpainting import Inpainting
    from plugins.kl import KL
    from plugins.layout import Layout
    from plugins.low_res import LowRes
    from plugins.masked import Masked
    from plugins.samplers import (
        DdimSampler,
        DdpmSampler,
        DpmPP2MSampler,
        DpmPP2MSdeSampler,
        EulerAncestralSampler,
        EulerSampler,
        HeunSampler,
        PlmsSampler,
    )
    from plugins.semantic_map import SemanticMap
    from plugins.shapes import Shapes
    from plugins.text_bert import TextBert
    from plugins.unet import UNet
    from plugins.vq import VQ

    registry.add("autoencoder", Autoencoder)
    registry.add("box_map", BoxMap)
    registry.add("class_label", ClassLabel)
    registry.add("clip_text", ClipTextEncoder)
    registry.add("digits", Digits)
    registry.add("frozen_text_encoder", FrozenTextEncoder)
    registry.add("identity", IdentityFirstStage)
    registry.add("image_folder", ImageFolder)
    registry.add("inpainting", Inpainting)
    registry.add("kl", KL)
    registry.add("layout", Layout)
    registry.add("low_res", LowRes)
    registry.add("masked", Masked)
    registry.add("ddim", DdimSampler)
    registry.add("ddpm", DdpmSampler)
    registry.add("dpmpp_2m", DpmPP2MSampler)
    registry.add("dpmpp_2m_sde", DpmPP2MSdeSampler)
    registry.add("euler", EulerSampler)
    registry.add("euler_ancestral", EulerAncestralSampler)
    registry.add("heun", HeunSampler)
    registry.add("plms", PlmsSampler)
    registry.add("semantic_map", SemanticMap)
    registry.add("shapes", Shapes)
    registry.add("text_bert", TextBert)
    registry.add("unet", UNet)
    registry.add("vq", VQ)
