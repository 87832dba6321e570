"""Export a model or a tuned adapter (merged) as safetensors, GGUF or ONNX, gated on parity with its source."""

from tailorlm.export.formats import QUANTS, Target, target
from tailorlm.export.parity import THRESHOLDS, ParityError, ParityReport
from tailorlm.export.run import ExportResult, default_name, export

__all__ = ["QUANTS", "THRESHOLDS", "ExportResult", "ParityError", "ParityReport", "Target", "default_name", "export",
           "target"]
