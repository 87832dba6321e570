"""Pre-flight fit: estimate the memory and decode speed of serving a model, and whether a machine holds it.

`estimate.py` holds the model of memory and speed, `targets.py` the machines, `stored.py` reads a stored
model for it, `preflight.py` is serve's check and `report.py` the table `tailor plan` prints.
"""

from tailorlm.plan.estimate import Estimate, ModelShape, read_shape, weight_bytes
from tailorlm.plan.stored import plan_stored
from tailorlm.plan.targets import TARGETS, Target, get_target, this_machine

__all__ = ["TARGETS", "Estimate", "ModelShape", "Target", "get_target", "plan_stored", "read_shape",
           "this_machine", "weight_bytes"]
