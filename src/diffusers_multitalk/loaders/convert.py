"""Old import path of `diffusers_multitalk.conversion`, which needs the pipeline and so sits above it now.

Kept only while cli.py imports `convert_original_to_diffusers` from here; delete it (and its ignore in the
import-linter contracts) once cli.py imports `diffusers_multitalk.conversion`.
"""

from ..conversion import (
    CONVERSION_REPORT,
    check_original_folders,
    convert_original_to_diffusers,
    model_card,
    verify_saved_pipeline,
)
