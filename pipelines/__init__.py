"""mixpipe: a reproducible, distributed pipeline for mixed-sample augmentation and model merging.

The library lives here; `stages/` holds the thin DVC entry points that call it.
"""

__version__ = "0.1.0"
