"""`tailor serve`'s pre-flight check: refuse, with the numbers, a configuration that cannot fit in memory.

Serve preloads the default model and lets each loaded model run `max_batch` requests at the model's full
context, so that is the configuration checked: against this machine's available memory and the
configured memory budget, whichever is smaller.
"""

from __future__ import annotations

import logging

from tailorlm.config import Settings
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
            parallel=max_batch or settings.max_batch, dtype=settings.dtype,
            budget_bytes=int(settings.memory_budget_gb * 1024**3), prefix_cache_bytes=settings.prefix_cache_mb * 2**20,
            kernels=settings.kernels,
        )
    except ModelNotFoundError:
        return None
    except TailorError as exc:  # a model we cannot size (no config.json, unknown dtype) is served unchecked
        log.warning("pre-flight memory check skipped for %s: %s", settings.default_model, exc.message)
        return None


def refusal(est: Estimate) -> str:
    """One line: what is needed, what there is, and how to make it fit."""
    kv = est.parts["kv cache"] + est.parts["kv growth"]
    return (f"{est.model} with --max-batch {est.parallel} at context {est.context} needs ~{est.total / MIB:,.0f} MiB "
            f"(KV cache {kv / MIB:,.0f} MiB) but the {est.limit_reason} is {est.available / MIB:,.0f} MiB; "
            f"lower --max-batch, raise --memory-budget-gb if the machine has room, or serve a quantized export "
            f"(see `tailor plan {est.model} --parallel N --quant q8_0`); --no-preflight skips this check")


def check_serve(settings: Settings) -> Settings:
    """The settings to serve with; WillNotFitError when the configuration serve is about to load will not fit.

    A `max_batch` the user set is checked as given. Left at its default, it is sized instead, as vLLM sizes its
    cache: the largest power of two up to the default whose worst case (every slot at full context) fits.
    """
    est = serve_estimate(settings)
    if est is None or est.fits:
        return settings
    if "max_batch" not in settings.model_fields_set:
        batch = settings.max_batch // 2
        while batch >= 1:
            smaller = serve_estimate(settings, batch)
            if smaller is not None and smaller.fits:
                log.warning("max_batch %d -> %d: %d requests at full context fit the %s (%s MiB of %s MiB)",
                            settings.max_batch, batch, batch, smaller.limit_reason, f"{smaller.total / MIB:,.0f}",
                            f"{smaller.available / MIB:,.0f}")
                return settings.model_copy(update={"max_batch": batch})
            batch //= 2
    raise WillNotFitError(refusal(est))
