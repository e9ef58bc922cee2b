"""Any-order decoding with a KV cache: step by step in any order, and infilling.

An AO-ARM is causal in generation order, so decoding keeps an ordinary append-only KV cache and
each step adds one slot. `Decoder` exposes the two moves of a step, which can be chosen on the fly:

- `predict(target)`: the distribution of the token at position `target` given everything so far;
- `append(pos, token)`: reveal tokens (one step, or a teacher-forced chunk of steps).

Two-stream models predict from the query stream without touching the cache, so `predict` can be
asked for several candidate targets. Single-stream models must feed the target position into the
slot that holds the last token, so there `predict` commits that slot and the next `append` must
reveal exactly the predicted position.

Every move is all or nothing: inputs are checked before anything runs, and a move that raises
midway (a hook, Ctrl-C) leaves the cache and the decoder's state as they were, so the move can be
retried (`KVCache.rollback_on_error`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.models.base import HookedAOModel
from workbench.models.single_stream import SingleStreamModel
from workbench.orders import check_order, check_tokens, random_orders


class Decoder:
    """Incremental state of a batch of any-order generations."""

    def __init__(self, model: HookedAOModel, batch: int):
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}.")
        self.model = model
        self.batch = batch
        self.cache = model.new_cache()
        self.device = model.W_E.device
        self.revealed = torch.zeros(batch, model.cfg.n_ctx, dtype=torch.bool, device=self.device)
        self.n_steps = 0
        self._pending: tuple[Tensor, Tensor] | None = None  # single stream: last (pos, token)
        self._predicted: Tensor | None = None  # single stream: target of the committed slot

    @property
    def _two_stream(self) -> bool:
        return not isinstance(self.model, SingleStreamModel)

    @torch.no_grad()
    def start(self) -> None:
        """Run the content stream's BOS slot (two-stream models) if nothing has run yet. `predict`
        and `append` do this themselves; call it to run the BOS slot on its own (e.g. to cache it)."""
        if self._two_stream and self.cache.n_slots == 0:
            empty = torch.empty(self.batch, 0, dtype=torch.long, device=self.device)
            with self.cache.rollback_on_error():
                self.model.run_streams(self.cache, empty, torch.full((self.batch, 1), -1, device=self.device), None, 0)

    @torch.no_grad()
    def predict(self, target: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_vocab"]:
        """Logits for the token at position `target[b]` of each sequence."""
        target = self._check_positions(target, "target", one_step=True)
        if not self._two_stream:
            if self._predicted is not None:
                raise RuntimeError(
                    "a single-stream model already committed its next slot to target "
                    f"{self._predicted.tolist()}; append that position before predicting again."
                )
            ids, own = self._pending_slot()
            with self.cache.rollback_on_error():
                logits = self.model.run_slots(self.cache, ids, own, target)
            self._predicted = target[:, 0]
        else:
            self.start()
            with self.cache.rollback_on_error():
                logits = self.model.run_streams(self.cache, None, None, target, self.n_steps)
        return logits[:, -1]

    @torch.no_grad()
    def append(self, pos: Int[Tensor, "batch n"], tokens: Int[Tensor, "batch n"]) -> None:
        """Reveal `tokens` at positions `pos` as the next n generation steps."""
        pos = self._check_positions(pos, "pos")
        if not isinstance(tokens, Tensor) or tokens.numel() != pos.numel():
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(
                f"append got positions of shape {tuple(pos.shape)} but tokens of shape {shape}; "
                "give one token per position ([batch, n] each)."
            )
        tokens = check_tokens(tokens.reshape(pos.shape), self.model.cfg.d_vocab, self.model.cfg.n_ctx).to(self.device)
        if not self._two_stream:
            # One slot per revealed step: the slot predicting pos[:, k] holds the token of step k-1.
            ids, own = tokens[:, :-1], pos[:, :-1]
            target = pos[:, 1:]
            if self._predicted is None:  # the slot holding the pending token has not run yet
                pending_ids, pending_own = self._pending_slot()
                ids, own = torch.cat([pending_ids, ids], 1), torch.cat([pending_own, own], 1)
                target = pos
            elif not torch.equal(pos[:, 0], self._predicted):
                raise ValueError(
                    f"the next slot was committed to positions {self._predicted.tolist()} by "
                    f"predict(), but append got {pos[:, 0].tolist()}; append the predicted position."
                )
            if target.shape[1]:
                with self.cache.rollback_on_error():
                    self.model.run_slots(self.cache, ids, own, target)
            self._pending, self._predicted = (pos[:, -1:], tokens[:, -1:]), None
        else:
            content_pos = pos
            if self.cache.n_slots == 0:  # the BOS slot runs in the same chunk (one run, one cache entry)
                content_pos = torch.cat([torch.full_like(pos[:, :1], -1), pos], dim=1)
            with self.cache.rollback_on_error():
                self.model.run_streams(self.cache, tokens, content_pos, None, 0)
        self.revealed.scatter_(1, pos, True)
        self.n_steps += pos.shape[1]

    def _pending_slot(self) -> tuple[Tensor, Tensor]:
        """(ids, own position) of the slot holding the last revealed token (BOS before any)."""
        if self._pending is None:
            empty = torch.empty(self.batch, 0, dtype=torch.long, device=self.device)
            return empty, torch.full((self.batch, 1), -1, device=self.device)
        pos, tok = self._pending
        return tok, pos

    def _check_positions(self, pos: object, what: str, one_step: bool = False) -> Tensor:
        """Integer positions as [batch, n] (or [batch, 1] for `one_step`), in range, unrevealed."""
        if not isinstance(pos, Tensor):
            pos = torch.as_tensor(pos)
        if pos.is_floating_point() or pos.is_complex() or pos.dtype == torch.bool:
            raise TypeError(f"{what} must hold integer positions, got dtype {pos.dtype}; convert with .long().")
        if one_step:
            ok = pos.numel() == self.batch and pos.ndim <= 2
        else:  # [batch, n]; [batch] is one step each; a batch of one may give [n] or a scalar
            ok = (pos.ndim == 2 and pos.shape[0] == self.batch) or (pos.ndim <= 1 and (self.batch == 1 or pos.numel() == self.batch))
        if not ok:
            shape = "[batch]" if one_step else "[batch, n]"
            raise ValueError(f"{what} must have shape {shape} with batch = {self.batch}, got {tuple(pos.shape)}.")
        pos = pos.to(self.device).long().reshape(self.batch, -1)
        n_ctx = self.model.cfg.n_ctx
        if pos.numel() and (pos.min() < 0 or pos.max() >= n_ctx):
            raise ValueError(f"{what}: positions must lie in [0, {n_ctx}), got {pos.tolist()}.")
        if self.revealed.gather(1, pos).any() or any(len(set(r)) < len(r) for r in pos.tolist()):
            raise ValueError(f"{what}: positions {pos.tolist()} include one already revealed; each position is generated once.")
        return pos


@dataclass
class StepCaches:
    """The activations of a cached generation (`generate(..., return_cache=True)`), step by step.

    Each cache maps the model's hook names to what that hook saw during the step, in the
    decoder's shapes: a step adds one slot, so `[batch, 1, ...]` rows, and attention patterns
    `[batch, head, 1, keys so far]`.
    """

    order: Int[Tensor, "batch step"]
    """The generation order used (position generated at each step)."""
    n_prefill: int
    """How many leading steps were known and fed in one chunk."""
    prefill: dict[str, Tensor] = field(default_factory=dict)
    """The prefill chunk (the BOS slot and the known leading steps) in one run."""
    steps: list[dict[str, Tensor]] = field(default_factory=list)
    """steps[j]: generation step n_prefill + j (predicting and then appending position order[:, step])."""

    def step(self, t: int) -> dict[str, Tensor]:
        """The cache of generation step t (n_prefill <= t < number of positions)."""
        if not self.n_prefill <= t < self.n_prefill + len(self.steps):
            raise IndexError(
                f"step {t} was not sampled: steps {self.n_prefill}..{self.n_prefill + len(self.steps) - 1} "
                f"were; the first {self.n_prefill} are in .prefill."
            )
        return self.steps[t - self.n_prefill]


@torch.no_grad()
def generate(
    model: HookedAOModel,
    tokens: Int[Tensor, "batch pos"] | str | list[str],
    max_new_tokens: int | None = None,
    known: Bool[Tensor, "batch pos"] | None = None,
    order: Int[Tensor, "batch step"] | str = "random",
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    return_cache: bool = False,
    names_filter=None,  # noqa: ANN001 (a TransformerLens NamesFilter)
) -> Tensor | str | list[str] | tuple[Tensor | str | list[str], StepCaches]:
    """Sample the unknown tokens of `tokens` in generation order `order`, with a KV cache.

    tokens: a template [batch, pos] (or [pos]) whose entries where `known` is False are ignored
        (any valid id, e.g. 0); or a text (a list of equal-length texts), which is the prompt and
        comes back as text.
    max_new_tokens: append this many unknown positions after `tokens`, which then is a prompt:
        all known unless `known` ([batch, prompt length]) says otherwise. Text needs it.
    known: which positions of `tokens` are given (infilling); default none (unconditional).
    order: a permutation [batch, step] or [step], or "random" (known positions first, in
        left-to-right order, then the rest in a uniformly random order) or "left_to_right".
        Known positions may appear anywhere in an explicit order: they are revealed, not sampled,
        at their step. The leading run of known steps is fed in one chunk (prefill).
    do_sample=False, or temperature 0, is greedy; otherwise softmax(logits / temperature) sampled
        from the top_k most likely tokens and / or the smallest set of mass >= top_p (nucleus).
    return_cache: also return a `StepCaches` with the activations of every step (names_filter
        picks the hooks, as in run_with_cache).
    Returns the completed tokens [batch, pos] (text for text input), and the StepCaches.
    """
    text_in, one_text = isinstance(tokens, (str, list)), isinstance(tokens, str)
    tokens, known = _template(model, tokens, max_new_tokens, known)
    _check_sampling(do_sample, temperature, top_k, top_p)
    if not do_sample:
        temperature = 0.0
    batch, n_pos = tokens.shape
    device = tokens.device
    if isinstance(order, str):
        if order == "left_to_right":
            order = torch.arange(n_pos, device=device).expand(batch, n_pos)
        elif order == "random":
            shuffled = random_orders(batch, n_pos, generator).to(device)
            key = (~known).gather(1, shuffled).long() * n_pos + torch.where(known.gather(1, shuffled), shuffled, 0)
            order = shuffled.gather(1, key.argsort(dim=1, stable=True))
        else:
            raise ValueError(f"order must be a permutation tensor, 'random' or 'left_to_right', got {order!r}.")
    order = check_order(order, batch, n_pos, device)

    out = tokens.clone()
    known_steps = known.gather(1, order)  # [batch, step]
    n_prefill = int(known_steps.all(dim=0).long().cumprod(0).sum())
    decoder = Decoder(model, batch)
    record, fwd_hooks = _recorder(model, return_cache, names_filter)
    caches = StepCaches(order, n_prefill)
    with model.hooks(fwd_hooks=fwd_hooks):
        if n_prefill:
            decoder.append(order[:, :n_prefill], out.gather(1, order[:, :n_prefill]))
        else:
            decoder.start()
        caches.prefill = record()
        for step in range(n_prefill, n_pos):
            pos = order[:, step]
            logits = decoder.predict(pos).float()
            sampled = _sample(logits, temperature, top_k, top_p, generator)
            token = torch.where(known_steps[:, step], out.gather(1, pos[:, None])[:, 0], sampled)
            out.scatter_(1, pos[:, None], token[:, None])
            decoder.append(pos[:, None], token[:, None])
            caches.steps.append(record())
    result = model.to_string(out) if text_in else out
    if one_text:
        result = result[0]
    return (result, caches) if return_cache else result


def _template(model: HookedAOModel, tokens: object, max_new_tokens: int | None, known: object) -> tuple[Tensor, Tensor]:
    """(template [batch, pos], known [batch, pos] bool) from generate's arguments, checked."""
    text_in = isinstance(tokens, (str, list))
    if text_in:
        if known is not None:
            raise ValueError("known is for a token template; a text prompt is known as a whole (leave known=None).")
        if max_new_tokens is None:
            raise ValueError("a text prompt needs max_new_tokens (how many tokens to generate after it).")
    tokens = model.to_tokens(tokens) if text_in else tokens
    tokens = check_tokens(tokens, model.cfg.d_vocab, model.cfg.n_ctx).to(model.W_E.device)
    batch, n_pos = tokens.shape
    if known is not None:
        if not isinstance(known, Tensor) or known.dtype != torch.bool:
            what = f"dtype {known.dtype}" if isinstance(known, Tensor) else type(known).__name__
            raise TypeError(f"known must be a bool tensor (True = given), got {what}; e.g. known = mask.bool() for a 0/1 mask.")
        if known.shape not in ((batch, n_pos), (n_pos,)):
            raise ValueError(
                f"known must have the shape of tokens, [batch, pos] = ({batch}, {n_pos}) or [pos] = ({n_pos},), "
                f"got {tuple(known.shape)}."
            )
        known = known.to(tokens.device).expand(batch, n_pos)
    if max_new_tokens is None:
        return tokens, torch.zeros_like(tokens, dtype=torch.bool) if known is None else known
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
    if n_pos + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(
            f"{n_pos} prompt tokens + max_new_tokens={max_new_tokens} exceed the model's context n_ctx={model.cfg.n_ctx}; "
            f"ask for at most {model.cfg.n_ctx - n_pos} new tokens."
        )
    prompt_known = torch.ones_like(tokens, dtype=torch.bool) if known is None else known
    new = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=tokens.device)
    return torch.cat([tokens, new], 1), torch.cat([prompt_known, new.bool()], 1)


def _check_sampling(do_sample: object, temperature: object, top_k: object, top_p: object) -> None:
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be True or False, got {do_sample!r}.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}.")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer (or None for no cut), got {top_k!r}.")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] (or None for no nucleus cut), got {top_p!r}.")


def _recorder(model: HookedAOModel, active: bool, names_filter) -> tuple:  # noqa: ANN001
    """(record, fwd_hooks): the hooks fill a dict; record() hands it over and starts a new one."""
    if not active:
        return dict, []
    store, fwd_hooks, _ = model.get_caching_hooks(names_filter)

    def record() -> dict[str, Tensor]:
        taken = dict(store)
        store.clear()
        return taken

    return record, fwd_hooks


def _sample(
    logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, index = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        cut = before >= top_p  # never the most likely token (before = 0 < top_p)
        logits = logits.masked_fill(cut.scatter(1, index, cut), float("-inf"))
    probs = logits.softmax(dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
