"""A mechanistic-interpretability workbench for any-order autoregressive models (AO-ARMs).

Public surface:
    workbench.AOConfig, workbench.from_config(cfg)  -- build a randomly initialised model
    workbench.load(name_or_path), workbench.list_checkpoints()  -- bundled or saved checkpoints
    model(tokens, order=...) -> logits; model.nll(...); model.generate(...); model.run_with_cache(...)
    workbench.hook_name(activation, layer, stream)  -- the hook name of an activation
    model.view(stream, order)  -- one stream under TransformerLens's names, for its tools
"""

from workbench.checkpoint import list_checkpoints, load
from workbench.config import AOConfig
from workbench.hook_names import hook_name
from workbench.models import HookedAOModel, from_config

__all__ = ["AOConfig", "HookedAOModel", "from_config", "hook_name", "list_checkpoints", "load"]
