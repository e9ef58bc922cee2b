"""Hugging Face XLNet (`XLNetLMHeadModel`) -> the workbench's hooked `xlnet` variant, exactly.

    model = from_hf_xlnet("/path/to/xlnet-base-cased")   # local dir: config.json + *.safetensors
    model = from_hf_xlnet(hf_model)                      # an XLNetLMHeadModel in memory
    python -m workbench.convert SRC_DIR OUT_DIR          # convert once, then workbench.load(OUT_DIR)

Nothing is downloaded and nothing is unpickled: a directory is read from its `config.json` and
safetensors files only (a directory with only `pytorch_model.bin` is refused, with the one-line
fix). Every tensor is checked against the shape the config implies before anything is built.

Weight map (HF -> workbench; HF's attention weights are [d_model, head, d_head]):

    transformer.word_embedding.weight      W_E                      [d_vocab, d_model]
    transformer.mask_emb                   w_query                  [1, 1, d_model] -> [d_model]
    layer.{l}.rel_attn.{q,k,v,r}           blocks.{l}.attn.W_{Q,K,V,R}   -> [head, d_model, d_head]
    layer.{l}.rel_attn.o                   blocks.{l}.attn.W_O           -> [head, d_head, d_model]
    layer.{l}.rel_attn.r_w_bias / r_r_bias / r_s_bias / seg_embed
                                           blocks.{l}.attn.b_content / b_pos / b_seg / W_seg
    layer.{l}.rel_attn.layer_norm          blocks.{l}.ln1
    layer.{l}.ff.layer_1 / layer_2         blocks.{l}.mlp.W_in, b_in / W_out, b_out (transposed)
    layer.{l}.ff.layer_norm                blocks.{l}.ln2
    lm_loss.weight (tied to the embedding when absent) / lm_loss.bias    W_U (transposed) / b_U
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from workbench.config import AOConfig
from workbench.models.xlnet import HookedXLNet

if TYPE_CHECKING:
    from transformers import XLNetConfig

DEFAULT_N_CTX = 512
"""XLNet has no length limit (relative positions); 512 is the length it was pretrained at."""
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")


class ConversionError(ValueError):
    """Weights or a config that cannot be converted, with what was wrong and how to fix it."""


def config_from_hf(hf_config: XLNetConfig, n_ctx: int = DEFAULT_N_CTX) -> AOConfig:
    """The `xlnet` AOConfig of a Hugging Face `XLNetConfig`; refuses what the variant cannot run."""
    problems = []
    if hf_config.attn_type != "bi":
        problems.append(
            f"attn_type={hf_config.attn_type!r}: only XLNet's 'bi' attention is supported ('uni' is "
            "Transformer-XL's left-to-right mask, which the generation order replaces)"
        )
    if hf_config.ff_activation not in ("gelu", "relu"):
        problems.append(f"ff_activation={hf_config.ff_activation!r}: only 'gelu' and 'relu' are supported")
    if problems:
        raise ConversionError("cannot convert this XLNet: " + "; ".join(problems) + ".")
    if hf_config.bi_data:
        warnings.warn(
            "the XLNet config has bi_data=True (a pretraining trick that runs half of each batch with "
            "reversed relative positions); the converted model always runs as bi_data=False, which is "
            "what Hugging Face does for inference with bi_data=False.",
            stacklevel=2,
        )
    return AOConfig(
        variant="xlnet",
        n_layers=hf_config.n_layer,
        d_model=hf_config.d_model,
        n_heads=hf_config.n_head,
        d_head=hf_config.d_head,
        d_mlp=hf_config.d_inner,
        n_ctx=n_ctx,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.ff_activation,
        layer_norm_eps=hf_config.layer_norm_eps,
        init_range=hf_config.initializer_range,
        clamp_len=int(hf_config.clamp_len),
    )


def hf_xlnet_shapes(hf_config: XLNetConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of an `XLNetLMHeadModel` state dict, from its config."""
    d, n, e, v, f = hf_config.d_model, hf_config.n_head, hf_config.d_head, hf_config.vocab_size, hf_config.d_inner
    shapes = {
        "transformer.word_embedding.weight": (v, d),
        "transformer.mask_emb": (1, 1, d),
        "lm_loss.weight": (v, d),
        "lm_loss.bias": (v,),
    }
    for layer in range(hf_config.n_layer):
        p = f"transformer.layer.{layer}."
        for name in ("q", "k", "v", "o", "r"):
            shapes[p + f"rel_attn.{name}"] = (d, n, e)
        for name in ("r_w_bias", "r_r_bias", "r_s_bias"):
            shapes[p + f"rel_attn.{name}"] = (n, e)
        shapes[p + "rel_attn.seg_embed"] = (2, n, e)
        for ln in ("rel_attn.layer_norm", "ff.layer_norm"):
            shapes[p + f"{ln}.weight"] = shapes[p + f"{ln}.bias"] = (d,)
        shapes[p + "ff.layer_1.weight"], shapes[p + "ff.layer_1.bias"] = (f, d), (f,)
        shapes[p + "ff.layer_2.weight"], shapes[p + "ff.layer_2.bias"] = (d, f), (d,)
    return shapes


def convert_state_dict(
    tensors: dict[str, Tensor], hf_config: XLNetConfig, strict: bool = True, where: str = "the weights"
) -> dict[str, Tensor]:
    """Map an `XLNetLMHeadModel` state dict to the workbench's names, checking every shape.

    `lm_loss.weight` may be absent when the config ties it to the embedding (as HF saves it).
    `strict` makes unexpected tensors an error. Raises ConversionError listing every problem.
    """
    tensors = dict(tensors)
    if not any(k.startswith("transformer.") for k in tensors) and "word_embedding.weight" in tensors:
        raise ConversionError(
            f"{where} look like a bare XLNetModel (no 'transformer.' prefix and no LM head "
            "'lm_loss.*'); the workbench needs XLNetLMHeadModel weights to produce logits."
        )
    expected = hf_xlnet_shapes(hf_config)
    if "lm_loss.weight" not in tensors and "transformer.word_embedding.weight" in tensors:
        if getattr(hf_config, "tie_word_embeddings", True):
            tensors["lm_loss.weight"] = tensors["transformer.word_embedding.weight"]
    missing = [k for k in expected if k not in tensors]
    wrong = [
        f"{k}: expected {expected[k]}, found {tuple(tensors[k].shape)}"
        for k in expected
        if k in tensors and tuple(tensors[k].shape) != expected[k]
    ]
    not_float = [f"{k}: {tensors[k].dtype}" for k in expected if k in tensors and not tensors[k].is_floating_point()]
    unexpected = sorted(set(tensors) - set(expected)) if strict else []
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if wrong:
        problems.append("wrong shapes (" + "; ".join(wrong) + ")")
    if not_float:
        problems.append("non-float tensors (" + "; ".join(not_float) + ")")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected} (pass strict=False to ignore them)")
    if problems:
        raise ConversionError(
            f"{where} do not match their XLNet config (n_layer={hf_config.n_layer}, d_model="
            f"{hf_config.d_model}, n_head={hf_config.n_head}, d_head={hf_config.d_head}, d_inner="
            f"{hf_config.d_inner}, vocab_size={hf_config.vocab_size}): " + "; ".join(problems)
            + ". Were config.json and the weights saved together from one XLNetLMHeadModel?"
        )

    out = {
        "W_E": tensors["transformer.word_embedding.weight"],
        "w_query": tensors["transformer.mask_emb"].reshape(-1),
        "W_U": tensors["lm_loss.weight"].T,
        "b_U": tensors["lm_loss.bias"],
    }
    for layer in range(hf_config.n_layer):
        p, b = f"transformer.layer.{layer}.", f"blocks.{layer}."
        for hf_name, ours in (("q", "W_Q"), ("k", "W_K"), ("v", "W_V"), ("r", "W_R")):
            out[b + f"attn.{ours}"] = tensors[p + f"rel_attn.{hf_name}"].permute(1, 0, 2)
        out[b + "attn.W_O"] = tensors[p + "rel_attn.o"].permute(1, 2, 0)
        for hf_name, ours in (("r_w_bias", "b_content"), ("r_r_bias", "b_pos"), ("r_s_bias", "b_seg"), ("seg_embed", "W_seg")):
            out[b + f"attn.{ours}"] = tensors[p + f"rel_attn.{hf_name}"]
        for hf_ln, ours in (("rel_attn.layer_norm", "ln1"), ("ff.layer_norm", "ln2")):
            out[b + f"{ours}.w"] = tensors[p + f"{hf_ln}.weight"]
            out[b + f"{ours}.b"] = tensors[p + f"{hf_ln}.bias"]
        out[b + "mlp.W_in"] = tensors[p + "ff.layer_1.weight"].T
        out[b + "mlp.b_in"] = tensors[p + "ff.layer_1.bias"]
        out[b + "mlp.W_out"] = tensors[p + "ff.layer_2.weight"].T
        out[b + "mlp.b_out"] = tensors[p + "ff.layer_2.bias"]
    return {k: v.detach().contiguous() for k, v in out.items()}


def read_hf_xlnet_dir(directory: str | Path) -> tuple[XLNetConfig, dict[str, Tensor]]:
    """`config.json` and the safetensors weights (one file or shards) of a local HF XLNet dir."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import XLNetConfig

    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"{directory} is not a directory; give a local directory saved by XLNetLMHeadModel.save_pretrained.")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{directory} has no config.json, so it is not a Hugging Face model directory.")
    model_type = _read_json(config_file).get("model_type")
    if model_type != "xlnet":
        raise ConversionError(f"{config_file} has model_type={model_type!r}; this converter reads XLNet ('xlnet') only.")
    hf_config = XLNetConfig.from_json_file(str(config_file))

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConversionError(f"{index} has no 'weight_map' object; save the model again with save_pretrained.")
        shards = sorted(set(map(str, weight_map.values())))
        files = [directory / s for s in shards]
    else:
        files = [directory / "model.safetensors"]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        pickles = [p for p in _PICKLES if (directory / p).exists()]
        hint = (
            f" It holds {pickles}, which the workbench never loads (unpickling can run arbitrary code). "
            "Convert it once, in an environment you trust: XLNetLMHeadModel.from_pretrained(dir)"
            ".save_pretrained(dir) writes model.safetensors (transformers >= 4.35 does by default)."
            if pickles
            else ""
        )
        raise ConversionError(f"{directory} has no {', '.join(absent)}.{hint}")
    tensors: dict[str, Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except SafetensorError as err:
            raise ConversionError(f"{f} is not a readable safetensors file ({err}); it is corrupt or truncated, save it again.") from err
    return hf_config, tensors


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConversionError(f"{file} is not valid JSON ({err}); save the model again with save_pretrained.") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{file} holds a {type(data).__name__}, not a JSON object; save the model again with save_pretrained.")
    return data


def from_hf_xlnet(
    source: Any,
    n_ctx: int = DEFAULT_N_CTX,
    tokenizer: Any = "auto",
    strict: bool = True,
    dtype: torch.dtype = torch.float32,
) -> HookedXLNet:
    """A hooked `xlnet` model with the weights of a Hugging Face XLNet, in eval mode.

    source: an `XLNetLMHeadModel`, or a local directory holding its `config.json` and
        `model.safetensors` (or safetensors shards with `model.safetensors.index.json`).
    n_ctx: the longest sequence the workbench model accepts (XLNet itself has no limit).
    tokenizer: "auto" reads `tokenizer.json` from a source directory when there is one (a
        sentencepiece `spiece.model` alone is not read: the model then has no tokenizer, and a
        warning says so); None for none; or a workbench `Tokenizer`.
    strict: unexpected tensors in the weights are an error (False ignores them).
    """
    from transformers import XLNetConfig, XLNetLMHeadModel

    directory = None
    if isinstance(source, (str, Path)):
        directory = Path(source)
        hf_config, tensors = read_hf_xlnet_dir(directory)
        where = f"the weights in {directory}"
    elif isinstance(source, XLNetLMHeadModel):
        hf_config, tensors, where = source.config, source.state_dict(), "the XLNetLMHeadModel's weights"
    elif isinstance(source, torch.nn.Module) and isinstance(getattr(source, "config", None), XLNetConfig):
        raise ConversionError(
            f"got a {type(source).__name__}; the workbench needs an XLNetLMHeadModel (it predicts "
            "tokens from the query stream through the LM head)."
        )
    else:
        raise TypeError(f"source must be an XLNetLMHeadModel or a directory path, got {type(source).__name__}.")

    cfg = config_from_hf(hf_config, n_ctx)
    state = convert_state_dict(tensors, hf_config, strict=strict, where=where)
    model = HookedXLNet(cfg)
    model.load_state_dict(state, strict=True)
    model.tokenizer = _tokenizer(tokenizer, directory, cfg.d_vocab)
    return model.to(dtype).eval()


def _tokenizer(tokenizer: Any, directory: Path | None, d_vocab: int) -> Any:
    if tokenizer != "auto":
        return tokenizer
    if directory is None:
        return None
    if (directory / "tokenizer.json").is_file():
        from workbench.data import HFTokenizer

        tok = HFTokenizer.from_file(directory / "tokenizer.json")
        if tok.vocab_size != d_vocab:
            warnings.warn(
                f"{directory / 'tokenizer.json'} has {tok.vocab_size} tokens but the model has "
                f"vocab_size={d_vocab}; loaded without a tokenizer.",
                stacklevel=3,
            )
            return None
        return tok
    found = " (it has a sentencepiece spiece.model, which is not read)" if (directory / "spiece.model").exists() else ""
    warnings.warn(
        f"{directory} has no tokenizer.json{found}; the model is loaded without a tokenizer. Write one "
        "with transformers: XLNetTokenizerFast.from_pretrained(dir).save_pretrained(dir), then convert again.",
        stacklevel=3,
    )
    return None


def main(argv: list[str] | None = None) -> None:
    """Convert a local HF XLNet directory into a workbench checkpoint directory."""
    from workbench.checkpoint import save
    from workbench.cli import describe_error

    parser = argparse.ArgumentParser(prog="python -m workbench.convert", description=main.__doc__)
    parser.add_argument("source", help="directory with config.json and model.safetensors of an XLNetLMHeadModel")
    parser.add_argument("out", help="workbench checkpoint directory to write (e.g. checkpoints/xlnet-base-cased)")
    parser.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX, help="longest sequence accepted (default 512)")
    args = parser.parse_args(argv)
    try:
        model = from_hf_xlnet(args.source, n_ctx=args.n_ctx)
        hf_config = _read_json(Path(args.source) / "config.json")
        out = save(model, args.out, training={"converted_from": str(Path(args.source).resolve()), "hf_config": hf_config})
    except (ValueError, OSError) as err:  # ConversionError and JSON errors are ValueErrors
        print(f"{parser.prog}: error: {describe_error(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters, tokenizer: {model.tokenizer is not None})")
