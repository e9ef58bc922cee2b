"""Converters from other libraries' checkpoints into the workbench's hooked models.

    from workbench.convert import from_hf_xlnet
    model = from_hf_xlnet("/path/to/xlnet-base-cased")   # local dir: config.json + model.safetensors

See docs/xlnet.md.
"""

from workbench.convert.xlnet import ConversionError, config_from_hf, from_hf_xlnet, hf_xlnet_shapes

__all__ = ["ConversionError", "config_from_hf", "from_hf_xlnet", "hf_xlnet_shapes"]
