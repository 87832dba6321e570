"""`tailor serve`'s pre-flight check: refuse, with the numbers, a configuration that cannot fit in memory.

Serve preloads the default model and lets each loaded model run `max_batch` requests at the model's full
context, so that is the configuration checked: against this machine's available memory and the
configured memory budget, whichever is smaller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tailorlm.config import FAST_DTYPE, Settings
from tailorlm.errors import InvalidRequestError, ModelNotFoundError, TailorError
from tailorlm.plan.estimate import MIB, Estimate
from tailorlm.plan.stored import plan_stored
from tailorlm.plan.targets import this_machine

log = logging.getLogger("tailorlm.server")


class WillNotFitError(InvalidRequestError):
    """The configuration to be served needs more memory than the machine (or the budget) gives it."""

    code = "will_not_fit"


def serve_estimate(settings: Settings, max_batch: int | None = None) -> Estimate | None:
    """The estimate of what serve will load; None when the default model is not in the store (nothing preloads)."""
    try:
        return plan_stored(
            settings.default_model, home=settings.home, target=this_machine(settings.home, bandwidth_gbs=0.0),
            # fast is int8 or the stored dtype: the stored one is the larger load
            parallel=max_batch or settings.max_batch, dtype="auto" if settings.dtype == FAST_DTYPE else settings.dtype,
            budget_bytes=int(settings.memory_budget_gb * 1024**3), prefix_cache_bytes=settings.prefix_cache_mb * 2**20,
            kernels=settings.kernels,
        )
    except ModelNotFoundError:
        return None
    except TailorError as exc:  # a model we cannot size (no config.json, unknown dtype) is served unchecked
        log.warning("pre-flight memory check skipped for %s: %s", settings.default_model, exc.message)
        return None


def refusal(est: Estimate) -> str:
    """One line: what one request at full context needs, what there is, and how to make it fit."""
    kv = est.parts["kv cache"] + est.parts["kv growth"]
    return (f"{est.model} with one request at its full context {est.context} needs ~{est.total / MIB:,.0f} MiB "
            f"(KV cache {kv / MIB:,.0f} MiB) but the {est.limit_reason} is {est.available / MIB:,.0f} MiB; "
            f"raise --memory-budget-gb if the machine has room, or serve a quantized export "
            f"(see `tailor plan {est.model} --quant q8_0`); --no-preflight skips this check")


@dataclass(frozen=True)
class Sized:
    """What serve runs with, and the line that tells the user."""

    settings: Settings
    full_context: int = 0  # requests at full context that fit the KV budget at once
    line: str = ""


def check_serve(settings: Settings) -> Sized:
    """The settings to serve with; WillNotFitError when not even one request at full context fits.

    `max_batch` is how many requests run together, never shrunk for memory: the KV cache grows as requests do,
    and the engine starts a request only while every running one could reach its full length within the KV
    budget (`kv_cache_mb`). Left at 0, that budget is sized here: the memory (or budget) the model leaves.
    """
    one = serve_estimate(settings, 1)
    if one is None:
        return Sized(settings)
    if not one.fits:
        raise WillNotFitError(refusal(one))
    budget = settings.kv_cache_mb * MIB
    if not budget:
        budget = one.available - (one.total - one.parts["kv cache"] - one.parts["kv growth"])
        settings = settings.model_copy(update={"kv_cache_mb": max(1, budget // MIB)})
    full = 1
    while full < settings.max_batch:  # the requests at full context that fit the budget at once
        est = serve_estimate(settings, full + 1)
        if est is None or est.parts["kv cache"] + est.parts["kv growth"] > budget:
            break
        full += 1
    line = (f"KV cache up to {budget / MIB:,.0f} MiB (the {one.limit_reason} less the model): {full} of max batch "
            f"{settings.max_batch} requests at full context {one.context} at once, more when shorter")
    return Sized(settings, full, line)
