"""Per-domain layer scores from one streaming pass over a calibration set.

For decoder layer l with raw input x and raw output y (hooks on the layer itself, so never the
final norm and never a deepstack injection), over the in-scope tokens of a domain:
  cosine  s_l = mean_t cos(x_t, y_t)         angular  = mean_t arccos(cos(x_t, y_t)) / pi
plus the Gromov block distance d(l, n) = arccos(cos(x^(l), x^(l+n))) / pi, where x^(l) is the input
of layer l and x^(L) the raw output of the last layer, averaged over samples on their last token
(or over every in-scope token). Sums and counts are kept per layer and per calibration sample in
float64 (`per_sample`, so scores can be resampled over samples without a model); hidden states
are never stored beyond the one batch in flight. Padding never counts; zero-norm tokens are skipped
and counted, so no NaN reaches the output. Tokens whose layer input or output holds inf/NaN (an
fp16 overflow) are never averaged in: they are counted per layer and domain (`nonfinite`) and
reported to the user. A layer the forward leaves out of a batch (only where its family says so:
Mllama's cross-attention layers without an image) adds nothing to its sums, and the block
distances see the hidden states it passed on unchanged; one never run in a domain scores 0 tokens
there and is reported (`unobserved_report`).

On a model dispatched over several devices (accelerate device map, CPU or disk offload), each
layer's sums live on the device its activations are on, and are gathered once at the end.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from layercut.data.encode import Batch
from layercut.errors import LayercutError
from layercut.io import refuse_nonfinite

SCOPES = ("all", "text", "image", "last")
BLOCK_TOKENS = ("last", "scope")
FORMAT = "layercut.scores/1"


@dataclass
class DomainScores:
    """Scores of one domain; lists have one entry per decoder layer unless said otherwise."""

    cosine: list[float]  # mean cos(x_t, y_t) over counted tokens (0.0 where no token counted)
    angular: list[float]  # mean arccos(cos)/pi over the same tokens
    tokens: list[int]  # tokens that counted
    zero_norm: list[int]  # tokens skipped because x_t or y_t had zero norm
    samples: int
    # block_distance[l][n-1] = d(l, n) for n = 1..L-l (row l has L-l entries)
    block_distance: list[list[float]] = field(default_factory=list)
    block_samples: int = 0
    # in-scope tokens left out because the layer's input or output held inf/NaN (fp16 overflow)
    nonfinite: list[int] = field(default_factory=list)
    # per sample, in calibration order, what the means above are made of (`from_samples`):
    # "stats" [S][L][5] sums (COS..NONFINITE), "block" / "block_n" [S][l][n-1] block-distance sums
    # and counts, "units" [S]. Empty in files from before it was kept or written without it.
    per_sample: dict[str, list] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.cosine)


@dataclass
class LayerScores:
    """Everything `layercut score` measured; `num_layers` and `domains.<d>.cosine` are public."""

    num_layers: int
    domains: dict[str, DomainScores]
    scope: str = "all"
    block_tokens: str = "last"
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def domain(self, name: str) -> DomainScores:
        if name not in self.domains:
            raise LayercutError(
                f"no domain '{name}' in the scores (have: {', '.join(sorted(self.domains))}): "
                "pick one of those or re-score with a calibration set that has it"
            )
        return self.domains[name]

    def combined(self, names: Iterable[str] | None = None) -> DomainScores:
        """Several domains as one, weighted by their token (and sample) counts: exact pooling."""
        names = list(self.domains) if names is None else list(names)
        if not names:
            raise LayercutError("no domains to combine: the scores file has no domains")
        parts = [self.domain(n) for n in names]
        L = self.num_layers
        tokens = [sum(p.tokens[i] for p in parts) for i in range(L)]

        def pool(attr: str) -> list[float]:
            return [sum(getattr(p, attr)[i] * p.tokens[i] for p in parts) / tokens[i] if tokens[i] else 0.0
                    for i in range(L)]

        bs = sum(p.block_samples for p in parts)
        block = [[sum(p.block_distance[l][j] * p.block_samples for p in parts if p.block_samples) / bs
                  for j in range(L - l)] for l in range(L)] if bs else []
        return DomainScores(
            cosine=pool("cosine"),
            angular=pool("angular"),
            tokens=tokens,
            zero_norm=[sum(p.zero_norm[i] for p in parts) for i in range(L)],
            samples=sum(p.samples for p in parts),
            block_distance=block,
            block_samples=bs,
            nonfinite=[sum(p.nonfinite[i] for p in parts if p.nonfinite) for i in range(L)],
        )

    def nonfinite_report(self) -> list[str]:
        """One line per domain whose activations held inf/NaN: which layers, from where, how many."""
        lines = []
        for name, d in self.domains.items():
            bad = [i for i, n in enumerate(d.nonfinite) if n]
            if bad:
                lines.append(
                    f"domain '{name}': inf/NaN activations in {len(bad)} layer(s), first at layer "
                    f"{bad[0]} ({d.nonfinite[bad[0]]} tokens there, {max(d.nonfinite)} at most); "
                    "those tokens are left out of the scores: score in bf16 or fp32 (--dtype)"
                )
        return lines

    def unobserved_report(self) -> list[str]:
        """One line per domain with layers the model left out of all its batches (no measurement)."""
        return [f"domain '{name}': layer(s) {', '.join(map(str, layers))} never ran on its samples (the "
                "model skips them on such inputs): 0 tokens scored there; add samples that run them "
                "(e.g. with images) to score them in this domain"
                for name, layers in self.meta.get("unobserved", {}).items()]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "num_layers": self.num_layers, "scope": self.scope,
                "block_tokens": self.block_tokens, "model": self.model,
                "domains": {k: asdict(v) for k, v in self.domains.items()}, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerScores":
        return cls(
            num_layers=int(d["num_layers"]),
            domains={k: DomainScores(**v) for k, v in d["domains"].items()},
            scope=d.get("scope", "all"),
            block_tokens=d.get("block_tokens", "last"),
            model=d.get("model", ""),
            meta=d.get("meta", {}),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LayerScores":
        path = Path(path)
        if not path.is_file():
            raise LayercutError(f"scores file '{path}' not found: run `layercut score` first")
        try:
            d = json.loads(path.read_text())
            scores = cls.from_dict(d)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LayercutError(
                f"scores file '{path}' is not a layercut scores.json ({exc.__class__.__name__}): "
                "re-run `layercut score`"
            ) from None
        if any(len(v.cosine) != scores.num_layers for v in scores.domains.values()):
            raise LayercutError(f"scores file '{path}' is inconsistent (num_layers vs lists): re-run `layercut score`")
        refuse_nonfinite([(f"domain '{n}' " + w.format(i=i, n=i + 1), v) for n, d in scores.domains.items() for w, r in [
            ("layer {i} has cosine", d.cosine), ("layer {i} has angular", d.angular)] + [(f"block distance d({l}, {{n}}) is",
            row) for l, row in enumerate(d.block_distance)] for i, v in enumerate(r)], f"scores file '{path}'", "re-run `layercut score`")
        return scores

    def to_frame(self) -> Any:
        """Tidy table: one row per (domain, layer)."""
        import pandas as pd

        rows = [
            {"domain": name, "layer": i, "cosine": d.cosine[i], "angular": d.angular[i], "tokens": d.tokens[i],
             "zero_norm": d.zero_norm[i], "nonfinite": d.nonfinite[i] if d.nonfinite else 0}
            for name, d in self.domains.items() for i in range(self.num_layers)
        ]
        return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the streaming pass


# Per-layer sums of one sample, one small vector: [cos, angular, tokens, zero-norm, non-finite]
COS, ANG, TOK, ZERO, NONFINITE = range(5)


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def from_samples(stats: np.ndarray, block: np.ndarray, block_n: np.ndarray, units: np.ndarray,
                 keep: bool = True) -> DomainScores:
    """A domain's scores from per-sample sums (stats [S, L, 5], block and block_n [S, L, L], units
    [S]). The one place sums become means: the scoring pass and a resample that draws every
    sample once (in order) add the same numbers in the same order, so they agree exactly."""
    L = stats.shape[1]
    total = stats.sum(axis=0)
    tokens = np.rint(total[:, TOK]).astype(np.int64)
    safe = np.maximum(tokens, 1)
    mean = block.sum(axis=0) / np.maximum(block_n.sum(axis=0), 1)
    per = {"stats": stats.tolist(), "block": [[r[:L - l] for l, r in enumerate(b)] for b in block.tolist()],
           "block_n": [[r[:L - l] for l, r in enumerate(b)] for b in block_n.tolist()],
           "units": units.tolist()} if keep else {}
    return DomainScores(
        cosine=(total[:, COS] / safe).tolist(), angular=(total[:, ANG] / safe).tolist(), tokens=tokens.tolist(),
        zero_norm=np.rint(total[:, ZERO]).astype(np.int64).tolist(), samples=len(stats),
        block_distance=[mean[l, : L - l].tolist() for l in range(L)], block_samples=int(units.sum()),
        nonfinite=np.rint(total[:, NONFINITE]).astype(np.int64).tolist(), per_sample=per,
    )


class _Domain:
    """Per-sample sums for one domain. Each layer's sums are made on the device its activations
    are on and stay there; `result` gathers them once."""

    def __init__(self, num_layers: int) -> None:
        self.L = num_layers
        self.rows: list[dict[int, torch.Tensor]] = [{} for _ in range(num_layers)]  # batch -> [B, 5]
        self.blocks: list[tuple[torch.Tensor, ...]] = []  # per batch: sums [B, L, L], counts, units [B]
        self.sizes: list[int] = []  # samples per batch

    def result(self) -> DomainScores:
        edges = np.cumsum([0] + self.sizes)
        stats = np.zeros((edges[-1], self.L, 5))
        for i, by_batch in enumerate(self.rows):
            for b, t in by_batch.items():
                stats[edges[b]:edges[b + 1], i] = t.cpu().double().numpy()
        block, block_n, units = (np.concatenate([t[j].cpu().numpy() for t in self.blocks]) for j in range(3))
        return from_samples(stats, block.astype(np.float64), block_n, units)


def token_scope_mask(
    scope: str, attention_mask: torch.Tensor, image_mask: torch.Tensor
) -> torch.Tensor:
    """[B, T] bool: the tokens a scope counts. Padding never counts."""
    valid = attention_mask.bool()
    if scope == "all":
        return valid
    if scope == "text":
        return valid & ~image_mask
    if scope == "image":
        return valid & image_mask
    if scope == "last":
        return last_token_mask(valid)
    raise LayercutError(f"unknown scope '{scope}': use one of {', '.join(SCOPES)}")


def last_token_mask(valid: torch.Tensor) -> torch.Tensor:
    """[B, T] bool with one True per row at its last non-padding position (left or right padding)."""
    T = valid.shape[1]
    pos = torch.arange(T, device=valid.device).expand_as(valid)
    last = torch.where(valid, pos, -1).argmax(dim=1)
    out = torch.zeros_like(valid)
    out[torch.arange(valid.shape[0], device=valid.device), last] = True
    return out & valid


def _cosine(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise cosine in float32 (whatever the model dtype) and a mask of rows with norms > 0."""
    x = x.float()
    y = y.float()
    nx = x.norm(dim=-1)
    ny = y.norm(dim=-1)
    ok = (nx > 0) & (ny > 0)
    cos = (x * y).sum(-1) / (nx * ny).clamp(min=torch.finfo(torch.float32).tiny)
    return cos.clamp(-1.0, 1.0), ok


class _Recorder:
    """Forward hooks that fold each layer's (input, output) into the current domain's sums."""

    def __init__(self, layers: torch.nn.ModuleList) -> None:
        self.layers = layers
        self.L = len(layers)
        self.domains: dict[str, _Domain] = {}
        self.acc: _Domain | None = None
        self.mask: torch.Tensor | None = None  # [B, T] in-scope tokens
        self.block_mask: torch.Tensor | None = None  # [B, T] tokens of the block matrix
        self.block_inputs: list[torch.Tensor | None] = []  # per layer: its input at the block tokens
        self.last: torch.Tensor | None = None  # the output of the last layer that ran
        self.handles = [
            layer.register_forward_hook(self._hook(i), with_kwargs=True)
            for i, layer in enumerate(layers)
        ]

    def start(self, domain: str, mask: torch.Tensor, block_mask: torch.Tensor) -> None:
        if domain not in self.domains:
            self.domains[domain] = _Domain(self.L)
        self.acc = self.domains[domain]
        self.acc.sizes.append(mask.shape[0])  # one row per sample
        self.mask = mask
        self.block_mask = block_mask
        self.block_inputs = [None] * self.L
        self.last = None

    def _hook(self, i: int):
        def hook(module, args, kwargs, output):  # noqa: ANN001 - torch hook signature
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            self._record(i, x.detach(), y.detach())

        return hook

    def _record(self, i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        acc = self.acc
        assert acc is not None and self.mask is not None and self.block_mask is not None
        if x.shape[:2] != self.mask.shape:
            raise LayercutError(
                f"layer {i} saw hidden states of shape {tuple(x.shape)} for a batch of shape "
                f"{tuple(self.mask.shape)}: this model rearranges tokens and is not supported"
            )
        mask = self.mask.to(x.device)
        cos, ok = _cosine(x, y)
        finite = torch.isfinite(x).all(dim=-1) & torch.isfinite(y).all(dim=-1)
        keep = mask & ok & finite
        c = torch.where(keep, cos.to(_acc_dtype(x.device)), 0.0)
        a = torch.where(keep, torch.arccos(c) / math.pi, 0.0)
        # One small [B, 5] tensor per layer, on this layer's own device: no sync, no transfer.
        acc.rows[i][len(acc.sizes) - 1] = torch.stack(
            [c.sum(1), a.sum(1)] + [m.sum(1).to(c.dtype) for m in (keep, mask & ~ok & finite, mask & ~finite)], 1)
        self.block_inputs[i] = x[self.block_mask.to(x.device)].float()
        self.last = y

    def finish(self, may_skip: set[int]) -> None:
        """Fold the batch's block distances once its forward is done. A layer the model left out
        (allowed only for `may_skip`) passed its input on unchanged: its input is the next one's."""
        left_out = [i for i, v in enumerate(self.block_inputs) if v is None]
        unexpected = sorted(set(left_out) - may_skip)
        if unexpected or self.last is None:
            raise LayercutError(f"decoder layer {(unexpected or left_out)[0]} was skipped during the forward "
                                "for no reason its model family declares: cannot score this model")
        y = self.last
        vs: list[Any] = [None] * self.L + [y[self.block_mask.to(y.device)].float()]
        for l in reversed(range(self.L)):
            vs[l] = self.block_inputs[l] if self.block_inputs[l] is not None else vs[l + 1]
        self._fold_blocks([v.to(y.device) for v in vs], y.device)

    def _fold_blocks(self, vs: list[torch.Tensor], device: torch.device) -> None:
        """d(l, n) for every start l and size n from this batch's block vectors `vs` (L+1 tensors
        [N, H]: each layer's input, then the last output), all on the last layer's device."""
        acc = self.acc
        assert acc is not None and self.block_mask is not None
        rows = self.block_mask.nonzero()[:, 0].to(device)  # each unit's sample (x[mask] is row-major)
        B, L = self.block_mask.shape[0], self.L
        block = torch.zeros(B, L, L, dtype=_acc_dtype(device), device=device)
        block_n = torch.zeros(B, L, L, dtype=torch.long, device=device)
        stack = torch.stack(vs)  # [L+1, N, H]
        norms = stack.norm(dim=-1)  # [L+1, N]
        good = (norms > 0) & torch.isfinite(norms)  # inf/NaN vectors never enter a distance
        unit = stack / norms.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)
        unit = torch.where(good.unsqueeze(-1), unit, 0.0)
        for l in range(self.L):
            cos = torch.einsum("nh,mnh->mn", unit[l], unit[l + 1 :]).clamp(-1.0, 1.0)  # [L-l, N]
            ok = good[l].unsqueeze(0) & good[l + 1 :]
            d = torch.where(ok, torch.arccos(cos.to(block.dtype)) / math.pi, 0.0)
            block[:, l, : L - l].index_add_(0, rows, d.T)
            block_n[:, l, : L - l].index_add_(0, rows, ok.T.long())
        acc.blocks.append((block, block_n, torch.bincount(rows, minlength=B)))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def score(
    adapter: Any,
    batches: Iterable[Batch],
    *,
    scope: str = "all",
    block_tokens: str = "last",
    progress: Any = None,
    meta: dict[str, Any] | None = None,
) -> LayerScores:
    """One forward per batch with hooks on every decoder layer; returns per-domain scores.

    `adapter` is a `layercut.models.Adapter`; `progress(batch)` is called after each forward.
    `block_tokens="last"` measures block distances on each sample's last token (Gromov et al.),
    `"scope"` on every in-scope token. Every layer is scored, guarded or not. The scores' meta
    records the family, its always-protected layers and each guard's layers by name (so a
    selection from the scores alone protects them, lifting a guard only if told to), layers a
    domain never ran, the samples per domain, the dtype and any device map, plus `meta` (e.g.
    what the calibration set was).
    """
    if scope not in SCOPES:
        raise LayercutError(f"unknown scope '{scope}': use one of {', '.join(SCOPES)}")
    if block_tokens not in BLOCK_TOKENS:
        raise LayercutError(
            f"unknown block-token choice '{block_tokens}': use one of {', '.join(BLOCK_TOKENS)}"
        )
    model = adapter.model
    rec = _Recorder(adapter.layers)
    try:
        for batch in batches:
            inputs = adapter.complete_inputs(batch.inputs)
            ids = inputs["input_ids"]
            attn = inputs.get("attention_mask")
            if attn is None:
                attn = torch.ones_like(ids)
            mask = token_scope_mask(scope, attn, adapter.image_mask(ids))
            block_mask = last_token_mask(attn.bool()) if block_tokens == "last" else mask
            rec.start(batch.domain, mask, block_mask)
            # The LM head is not scored: keep one position so it costs nothing (8x256 tokens of
            # a 49k vocabulary would otherwise be ~400 MiB of logits per batch).
            model(**inputs, use_cache=False, logits_to_keep=1)
            rec.finish(adapter.skipped_layers(inputs))
            if progress is not None:
                progress(batch)
    finally:
        rec.close()
    domains = {}
    for name, acc in rec.domains.items():
        result = acc.result()
        if max(result.tokens) == 0 and not any(result.nonfinite):
            continue  # e.g. scope=image on a text-only domain: nothing measured, nothing reported
        domains[name] = result
    if not domains:
        raise LayercutError(
            f"no token fell in scope '{scope}' in any domain: pick another --scope "
            "(image scope needs samples with images)"
        )
    from layercut.models import dtype_name

    info: dict[str, Any] = {
        "family": adapter.family.name,
        "family_protected": sorted(adapter.family.protected(model.config)),
        "family_guards": {name: sorted(layers) for name, layers in adapter.guard_layers().items()},
        **(meta or {}),
        "samples": {d: s.samples for d, s in domains.items()},
        "dtype": dtype_name(adapter.dtype),
    }
    unobserved = {d: [i for i, s in enumerate(rec.domains[d].rows) if not s] for d in domains}
    if any(unobserved.values()):
        info["unobserved"] = {d: layers for d, layers in unobserved.items() if layers}
    if adapter.device_map:
        info["device_map"] = {k: str(v) for k, v in adapter.device_map.items()}
    return LayerScores(
        num_layers=rec.L, domains=domains, scope=scope, block_tokens=block_tokens,
        model=getattr(adapter, "source", ""), meta=info,
    )
