"""The single-drop damage profile, and the critical layers it flags.

Cosine similarity says how little a layer changes its input, not what removing it costs: a few
layers with ordinary cosine hurt far more than the rest when dropped (FACTS: the first two and
the last of SmolLM2, and some in between). `probe` drops each unprotected layer alone and
measures the calibration NLL per domain, with the shared-work engine (each single-drop
configuration runs only from its dropped layer on). `flag` applies the guard's rule.

Guard rule (documented, used by `--guard`): a layer is critical when its damage on the pooled
calibration data ("all") is an outlier, damage > median + 3 * MAD over the probed layers
(MAD = median absolute deviation from the median, unscaled), and damage > 0.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layercut.errors import LayercutError

RULE = "damage(all) > median + 3 * MAD over the probed layers, and > 0"
MAD_FACTOR = 3.0


@dataclass
class DamageProfile:
    """Calibration NLL per domain of the unpruned model and of each single-layer drop."""

    model: str
    num_layers: int
    baseline: dict[str, float]  # domain (and "all") -> mean NLL, nothing dropped
    nll: dict[str, list[float | None]]  # domain -> per layer NLL with that layer dropped (None: not probed)
    protected: list[int] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)  # critical layers by RULE
    rule: str = RULE
    seconds: float = 0.0

    def damage(self, domain: str = "all") -> list[float | None]:
        """NLL increase per layer when it alone is dropped (None where not probed)."""
        if domain not in self.nll:
            raise LayercutError(f"the probe has no domain '{domain}': it has {', '.join(self.nll)}")
        base = self.baseline[domain]
        return [None if v is None else v - base for v in self.nll[domain]]

    def save(self, path: str | Path) -> None:
        from layercut.io import atomic_file

        with atomic_file(Path(path), overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DamageProfile:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise LayercutError(f"probe file '{path}' not found: run `layercut probe` first") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise LayercutError(f"'{path}' is not a probe file written by `layercut probe` ({exc})") from None


def flag(damage: list[float | None]) -> list[int]:
    """Layers whose damage is an outlier by RULE."""
    probed = [d for d in damage if d is not None]
    if len(probed) < 3:
        return []
    med = statistics.median(probed)
    mad = statistics.median(abs(d - med) for d in probed)
    return [i for i, d in enumerate(damage) if d is not None and d > 0 and d > med + MAD_FACTOR * mad]


def probe(adapter: Any, batches: list[Any], protect: set[int], *, cache_mem: int | str | None = None,
          progress: Any = None) -> DamageProfile:
    """Drop each layer outside `protect` alone; calibration NLL per domain for each.

    `batches`: encoded calibration batches (`data.encode.encode_batches`). `progress(done, total)`
    is called after each configuration."""
    from layercut.engine import SharedWork

    L = adapter.num_layers
    if not batches:
        raise LayercutError("the calibration set is empty: give at least one sample")
    t0 = time.perf_counter()
    work = SharedWork.for_calibration(adapter, batches, cache_mem=cache_mem)
    never = set(protect) | set(work.root)
    drops = [()] + [(i,) for i in range(L) if i not in never]
    results: dict[tuple[int, ...], dict[str, float]] = {}
    for n, (drop, metrics, _) in enumerate(work.run(drops), 1):
        results[drop] = metrics
        if progress:
            progress(n, len(drops))
    baseline = results[()]
    nll = {d: [results[(i,)][d] if (i,) in results else None for i in range(L)] for d in baseline}
    profile = DamageProfile(model=adapter.source, num_layers=L, baseline=baseline, nll=nll,
                            protected=sorted(never), seconds=time.perf_counter() - t0)
    profile.flagged = flag(profile.damage("all"))
    return profile


def probe_samples(adapter: Any, samples: list[Any], *, protect: Any = "none", batch_size: int = 8,
                  max_length: int = 512, cache_mem: int | str | None = None,
                  progress: Any = None) -> DamageProfile:
    """`probe` on calibration samples, encoded here. `protect` is what `selection.protect_set`
    takes ('none': every layer the family allows, 'default': all but the first and last, or
    indices); the family's own protected layers are always left out."""
    from layercut.data.encode import encode_batches
    from layercut.selection import protect_set

    batches = list(encode_batches(adapter, samples, batch_size=batch_size, max_length=max_length))
    never = protect_set(adapter.num_layers, protect, adapter.protected_layers())
    return probe(adapter, batches, never, cache_mem=cache_mem, progress=progress)
