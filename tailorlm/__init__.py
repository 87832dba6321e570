"""tailorlm: make an open-weight language model your own and run it wherever you want."""

import os

# OpenMP threads sleep as soon as a parallel region ends instead of spinning for it to come back. Spinning
# threads starve everything else on a small machine: llama.cpp's threads and torch's share one libgomp, and a
# second busy process (a training worker beside the server) made decode 10-30x slower with spinning, against a
# few percent with passive waiting (docs/decisions.md). Read once, when torch is first imported; set it yourself
# to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
