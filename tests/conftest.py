import atexit
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Every artefact a test run builds (tiny models, compiled constraints, hub caches) goes to one temporary
# directory, removed at exit: no test writes into the user's caches. Subprocesses inherit it.
_SCRATCH = tempfile.mkdtemp(prefix="flexjudge-tests-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["FLEXJUDGE_CACHE_DIR"] = os.path.join(_SCRATCH, "flexjudge")
os.environ["HF_HOME"] = os.path.join(_SCRATCH, "huggingface")

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
