"""Schema versions of the files a run writes that later commands read back.

A lens folder's ``config.json``, a run's ``run.json`` and its ``vision-lens-manifest.json`` carry ``"schema":
N``. A reader knows every version up to its own: it reads an older one through the shims written for it (each
named after the version it serves, and applied only there), and refuses a newer one by name rather than
misreading it. Files written before versions were recorded (the committed ``results/`` among them) are
version 1.
"""

from __future__ import annotations

from .errors import UserError

SCHEMA_KEY = "schema"
UNVERSIONED = 1  # what a file without a "schema" key is: written before versions were recorded
# The version this code writes, per kind of file.
LENS_CONFIG = 2  # 2: typed fit records (fit.FitRecord), every field present
RUN_INFO = 2  # 2: run.json records block_stages, the recipe, cache_dir and the lens kinds
MANIFEST = 2  # 2: the same fields, versioned


class SchemaError(UserError, ValueError):
    """A file written by a newer vision-lens than this one (or with a malformed version); the message names it."""


def schema_version(record: dict, current: int, path) -> int:
    """The version of ``record`` (read from ``path``): ``UNVERSIONED`` without a ``schema`` key; a SchemaError where
    it is newer than ``current`` or not a positive integer."""
    version = record.get(SCHEMA_KEY, UNVERSIONED)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SchemaError(f"{path}: its {SCHEMA_KEY!r} is {version!r}, not a version number; the file is damaged")
    if version > current:
        raise SchemaError(f"{path} has schema version {version}, newer than this vision-lens reads ({current}); "
                          "upgrade vision-lens (pip install -U vision-lens) to read it")
    return version


# Version 1's fit records named their solver in prose (the convex solver not at all) and counted the L-BFGS
# iterations as "iterations" where the recipe counted "steps".
_V1_SOLVERS = {None: "convex", "autograd L-BFGS through the unembedding": "autograd", "tuned-lens recipe (SGD)": "recipe"}


def upgrade_fit_v1(fit: dict) -> dict:
    """A version-1 lens config's ``fit`` (or one lens's entry of a version-1 run.json's ``fit``) in the current form:
    each block's record names its solver (``convex``, ``autograd``, ``recipe``) and counts ``steps``."""
    if not isinstance(fit, dict) or not isinstance(fit.get("blocks"), dict):
        return fit

    def record(r):
        if not isinstance(r, dict):
            return r
        r = dict(r)
        r["solver"] = _V1_SOLVERS.get(r.get("solver"), r.get("solver"))
        if "iterations" in r:
            r["steps"] = r.pop("iterations")
        return r

    return fit | {"blocks": {name: record(r) for name, r in fit["blocks"].items()}}
