"""Any-order decoding with a KV cache: step by step in any order, and infilling.

An AO-ARM is causal in generation order, so decoding keeps an ordinary append-only KV cache and
each step adds one slot. `Decoder` exposes the two moves of a step, which can be chosen on the fly:

- `predict(target)`: the distribution of the token at position `target` given everything so far;
- `append(pos, token)`: reveal tokens (one step, or a teacher-forced chunk of steps).

Two-stream models predict from the query stream without touching the cache, so `predict` can be
asked for several candidate targets. Single-stream models must feed the target position into the
slot that holds the last token, so there `predict` commits that slot and the next `append` must
reveal exactly the predicted position.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.models.base import HookedAOModel
from workbench.models.single_stream import SingleStreamModel
from workbench.orders import check_order, check_tokens, random_orders


class Decoder:
    """Incremental state of a batch of any-order generations."""

    def __init__(self, model: HookedAOModel, batch: int):
        self.model = model
        self.batch = batch
        self.cache = model.new_cache()
        self.device = model.W_E.device
        self.revealed = torch.zeros(batch, model.cfg.n_ctx, dtype=torch.bool, device=self.device)
        self.n_steps = 0
        self._pending: tuple[Tensor, Tensor] | None = None  # single stream: last (pos, token)
        self._predicted: Tensor | None = None  # single stream: target of the committed slot
        if not isinstance(model, SingleStreamModel):  # the content stream's BOS slot
            empty = torch.empty(batch, 0, dtype=torch.long, device=self.device)
            model.run_streams(self.cache, empty, torch.full((batch, 1), -1, device=self.device), None, 0)

    @torch.no_grad()
    def predict(self, target: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_vocab"]:
        """Logits for the token at position `target[b]` of each sequence."""
        target = self._check_positions(target.view(self.batch, 1))
        if isinstance(self.model, SingleStreamModel):
            if self._predicted is not None:
                raise RuntimeError(
                    "a single-stream model already committed its next slot to target "
                    f"{self._predicted.tolist()}; append that position before predicting again."
                )
            ids, own = self._pending_slot()
            logits = self.model.run_slots(self.cache, ids, own, target)
            self._predicted = target[:, 0]
        else:
            logits = self.model.run_streams(self.cache, None, None, target, self.n_steps)
        return logits[:, -1]

    @torch.no_grad()
    def append(self, pos: Int[Tensor, "batch n"], tokens: Int[Tensor, "batch n"]) -> None:
        """Reveal `tokens` at positions `pos` as the next n generation steps."""
        pos = self._check_positions(pos.view(self.batch, -1))
        tokens = check_tokens(tokens.view(self.batch, -1), self.model.cfg.d_vocab, self.model.cfg.n_ctx)
        tokens = tokens.to(self.device)
        if isinstance(self.model, SingleStreamModel):
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
                self.model.run_slots(self.cache, ids, own, target)
            self._pending, self._predicted = (pos[:, -1:], tokens[:, -1:]), None
        else:
            self.model.run_streams(self.cache, tokens, pos, None, 0)
        self.revealed.scatter_(1, pos, True)
        self.n_steps += pos.shape[1]

    def _pending_slot(self) -> tuple[Tensor, Tensor]:
        """(ids, own position) of the slot holding the last revealed token (BOS before any)."""
        if self._pending is None:
            empty = torch.empty(self.batch, 0, dtype=torch.long, device=self.device)
            return empty, torch.full((self.batch, 1), -1, device=self.device)
        pos, tok = self._pending
        return tok, pos

    def _check_positions(self, pos: Tensor) -> Tensor:
        pos = pos.to(self.device).long()
        n_ctx = self.model.cfg.n_ctx
        if pos.numel() and (pos.min() < 0 or pos.max() >= n_ctx):
            raise ValueError(f"positions must lie in [0, {n_ctx}), got {pos.tolist()}.")
        if self.revealed.gather(1, pos).any() or any(len(set(r)) < len(r) for r in pos.tolist()):
            raise ValueError(f"positions {pos.tolist()} include one already revealed; each position is generated once.")
        return pos


@torch.no_grad()
def generate(
    model: HookedAOModel,
    tokens: Int[Tensor, "batch pos"],
    known: Bool[Tensor, "batch pos"] | None = None,
    order: Int[Tensor, "batch step"] | str = "random",
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, "batch pos"]:
    """Sample the unknown tokens of `tokens` in generation order `order`, with a KV cache.

    tokens: a template [batch, pos] (or [pos]); entries where `known` is False are ignored (any
        valid id, e.g. 0). Its length is the length generated.
    known: which positions are given (infilling); default none (unconditional generation).
    order: a permutation [batch, step] or [step], or "random" (known positions first, in
        left-to-right order, then the rest in a uniformly random order) or "left_to_right".
        Known positions may appear anywhere in an explicit order: they are revealed, not sampled,
        at their step. The leading run of known steps is fed in one chunk (prefill).
    temperature, top_k: sampling; temperature 0 means greedy.
    Returns the completed tokens [batch, pos].
    """
    tokens = check_tokens(tokens, model.cfg.d_vocab, model.cfg.n_ctx).to(model.W_E.device)
    batch, n_pos = tokens.shape
    device = tokens.device
    if known is None:
        known = torch.zeros_like(tokens, dtype=torch.bool)
    known = known.to(device).bool().expand(batch, n_pos)
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
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")

    out = tokens.clone()
    known_steps = known.gather(1, order)  # [batch, step]
    n_prefill = int(known_steps.all(dim=0).long().cumprod(0).sum())
    decoder = Decoder(model, batch)
    if n_prefill:
        decoder.append(order[:, :n_prefill], out.gather(1, order[:, :n_prefill]))
    for step in range(n_prefill, n_pos):
        pos = order[:, step]
        logits = decoder.predict(pos).float()
        sampled = _sample(logits, temperature, top_k, generator)
        token = torch.where(known_steps[:, step], out.gather(1, pos[:, None])[:, 0], sampled)
        out.scatter_(1, pos[:, None], token[:, None])
        decoder.append(pos[:, None], token[:, None])
    return out


def _sample(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
