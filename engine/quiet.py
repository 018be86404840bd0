"""Silence the libraries' own progress bars and warnings: likeness reports progress itself."""

import logging
import os


def quiet_libraries() -> None:
    """Call before diffusers/transformers are first imported, so their import-time notices stay quiet too."""
    # bitsandbytes announces optional CPU kernels it could not find; the 8-bit optimizer needs none of them.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
