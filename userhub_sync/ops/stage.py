"""A stage's variables from `.chalice/config.json`, the single source of truth for every command.

The CLI reads the same merged `environment_variables` that `chalice deploy` gives the Lambdas (top level, then the
stage, then the stage's per-function block), so an operator's `status` or `dlq replay` sees exactly the queues the
deployed functions use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFIG_PATH = Path(".chalice") / "config.json"


class StageError(Exception):
    """The stage or its config file is missing or malformed."""


def find_project_dir(start: Path | None = None) -> Path:
    """The nearest directory upwards holding `.chalice/config.json` (or the current one)."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_PATH).is_file():
            return candidate
    return here


def read_config(project_dir: Path | None = None) -> dict[str, Any]:
    path = (project_dir or find_project_dir()) / CONFIG_PATH
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(
            f"{path} not found: run this from the project directory (the one holding .chalice/config.json) "
            "or a directory below it"
        ) from None
    except json.JSONDecodeError as error:
        raise StageError(f"{path} is not valid JSON: {error}") from None


def write_config(config: dict[str, Any], project_dir: Path | None = None) -> Path:
    path = (project_dir or find_project_dir()) / CONFIG_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(path)
    return path


def stage_variables(stage: str, function: str | None = None, project_dir: Path | None = None) -> dict[str, str]:
    """The environment a deployed function of `stage` gets (Chalice's own merge order)."""
    config = read_config(project_dir)
    stages = config.get("stages") or {}
    if stage not in stages:
        known = ", ".join(sorted(stages)) or "none"
        raise StageError(
            f"stage {stage!r} is not in .chalice/config.json (stages: {known}): add it with "
            f"`userhub-sync bootstrap --stage {stage} --create-stage` (copies --from-stage dev)"
        )
    merged: dict[str, str] = {}
    merged.update(config.get("environment_variables") or {})
    merged.update(stages[stage].get("environment_variables") or {})
    if function:
        merged.update(
            ((stages[stage].get("lambda_functions") or {}).get(function) or {}).get("environment_variables") or {}
        )
    return {k: str(v) for k, v in merged.items()}


def apply_stage(stage: str | None, function: str | None = None, project_dir: Path | None = None) -> dict[str, str]:
    """Put the stage's variables into os.environ (variables already set in the shell win) and reset caches."""
    values: dict[str, str] = {}
    if stage:
        values = stage_variables(stage, function, project_dir)
        for key, value in values.items():
            os.environ.setdefault(key, value)
    from chalicelib.settings import reset_settings

    reset_settings()
    return values
