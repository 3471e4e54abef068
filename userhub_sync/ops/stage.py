"""A stage's variables from `.chalice/config.json`, the single source of truth for every command.

The CLI reads the same merged `environment_variables` that `chalice deploy` gives the Lambdas (top level, then the
stage, then the stage's per-function block), so an operator's `status` or `dlq replay` sees exactly the queues the
deployed functions use. Every command resolves the stage the same way (`load_stage`: shell variables win over
config.json) and names AWS resources by the same conventions as `chalice deploy`, so `bootstrap`, `wire`, `status`
and `dlq` always agree on which queue, pool, bucket or function they mean.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.identifiers import CONNECTION_ID_PATTERN, USER_POOL_ID_PATTERN
from userhub_sync.ops.errors import OpsError

CONFIG_PATH = Path(".chalice") / "config.json"
DEFAULT_APP_NAME = "userhub-sync"
CHALICE_DEFAULT_TIMEOUT = 60  # chalice/constants.py: DEFAULT_LAMBDA_TIMEOUT
POOL_ID_RE = re.compile(USER_POOL_ID_PATTERN)  # the shapes deliver and the settings accept
CONNECTION_RE = re.compile(CONNECTION_ID_PATTERN)


class StageError(OpsError):
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
        config: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(
            f"{path} not found: run this from the project directory (the one holding .chalice/config.json) "
            "or a directory below it"
        ) from None
    except json.JSONDecodeError as error:
        raise StageError(f"{path} is not valid JSON: {error}") from None
    return config


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


def default_names(app: str, stage: str) -> dict[str, str]:
    """The names a stage's resources get by convention, by the variable that names each otherwise."""
    return {
        "EVENTS_QUEUE_NAME": f"{app}-{stage}-events",
        "DEAD_LETTER_QUEUE_NAME": f"{app}-{stage}-dlq",
        "SNAPSHOT_BUCKET": f"{app}-{stage}-snapshots",
        "USERHUB_ADMIN_KEY_PARAMETER": f"/{app}/{stage}/admin-key",
    }


def is_placeholder(value: str | None) -> bool:
    return not value or "CHANGEME" in value


@dataclass
class StageContext:
    """The stage's resource names, after `apply_stage` (shell variables win over config.json)."""

    stage: str
    project_dir: Path
    config: dict[str, Any]
    variables: dict[str, str]
    events_queue: str = field(init=False)
    dead_letter_queue: str = field(init=False)
    bucket: str = field(init=False)
    key_parameter: str = field(init=False)

    def __post_init__(self) -> None:
        names = {name: self.var(name) or default for name, default in default_names(self.app_name, self.stage).items()}
        self.events_queue, self.dead_letter_queue = names["EVENTS_QUEUE_NAME"], names["DEAD_LETTER_QUEUE_NAME"]
        self.bucket, self.key_parameter = names["SNAPSHOT_BUCKET"], names["USERHUB_ADMIN_KEY_PARAMETER"]

    @property
    def app_name(self) -> str:
        return str(self.config.get("app_name") or DEFAULT_APP_NAME)

    def var(self, name: str, default: str | None = None) -> str | None:
        value = os.environ.get(name) or self.variables.get(name)
        return value or default

    def deploy_var(self, name: str) -> str | None:
        """The value `chalice deploy` gives app.py: it puts the stage's config.json variables over the shell's."""
        return self.variables.get(name) or os.environ.get(name) or None

    @property
    def user_pool_id(self) -> str | None:
        pool = self.var("USER_POOL_ID")
        return None if is_placeholder(pool) else pool

    def function_name(self, function: str) -> str:
        """The deployed name, as `chalice deploy` builds it (`{app_name}-{stage}-{name}`)."""
        return f"{self.app_name}-{self.stage}-{function}"

    def stage_block(self) -> dict[str, Any]:
        block: dict[str, Any] = (self.config.get("stages") or {}).get(self.stage) or {}
        return block

    def function_setting(self, function: str, key: str, default: Any = None) -> Any:
        """Chalice's lookup order: stage's per-function block, stage, top-level per-function block, top level."""
        stage = self.stage_block()
        for scope in (
            ((stage.get("lambda_functions") or {}).get(function) or {}),
            stage,
            ((self.config.get("lambda_functions") or {}).get(function) or {}),
            self.config,
        ):
            if key in scope:
                return scope[key]
        return default

    def deliver_max_concurrency(self) -> int:
        """The fleet bound the stage asks for: DELIVER_MAX_CONCURRENCY, read as app.py reads it at deploy."""
        from chalicelib.sqs_limits import deliver_max_concurrency

        try:
            return deliver_max_concurrency(self.var("DELIVER_MAX_CONCURRENCY"))
        except ValueError as error:
            raise StageError(str(error)) from None

    def deliver_timeout(self) -> int:
        return int(self.function_setting("deliver", "lambda_timeout", CHALICE_DEFAULT_TIMEOUT))


def load_stage(stage: str, project_dir: Path | None = None) -> StageContext:
    """Read config.json, put the stage's variables into os.environ (shell wins) and return its names."""
    project = project_dir or find_project_dir()
    variables = apply_stage(stage, project_dir=project)
    return StageContext(stage=stage, project_dir=project, config=read_config(project), variables=variables)


@dataclass
class DeployedState:
    """What `chalice deploy` recorded in `.chalice/deployed/<stage>.json`."""

    path: Path
    functions: dict[str, str] = field(default_factory=dict)  # chalice name -> lambda ARN
    sqs_events: dict[str, dict[str, str]] = field(default_factory=dict)  # resource name -> record

    def esm_uuid(self, function: str = "deliver") -> str | None:
        record = self.sqs_events.get(f"{function}-sqs-event-source")
        if record is None:  # a custom name= on the decorator: find it by the function's ARN
            arn = self.functions.get(function)
            record = next((r for r in self.sqs_events.values() if arn and r.get("lambda_arn") == arn), None)
        return (record or {}).get("event_uuid")


def read_deployed(project_dir: Path, stage: str) -> DeployedState | None:
    path = project_dir / ".chalice" / "deployed" / f"{stage}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise OpsError(f"{path} is not valid JSON: {error}") from None
    state = DeployedState(path=path)
    for resource in data.get("resources") or []:
        kind = resource.get("resource_type")
        if kind == "lambda_function" and resource.get("lambda_arn"):
            state.functions[resource["name"]] = resource["lambda_arn"]
        elif kind == "sqs_event":
            state.sqs_events[resource.get("name", "")] = resource
    return state
