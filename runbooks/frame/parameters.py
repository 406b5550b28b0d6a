"""A flow's parameters as Prefect expects them: one named, typed, described keyword argument per field.

Each runbook keeps one pydantic model for its parameters (validation across fields, ``check_against`` the
settings, ``runbooks run --param``), and its flow body takes that model. ``takes(Model)`` gives the body the
signature Prefect reads: one keyword argument per field, with the field's type, constraints, default and
description. So the UI renders one form field each, ``prefect deployment run backup/backup-on-demand --param
dry_run=true`` works, and an automation passes ``{"database": "{{ event.resource.id }}"}`` as Prefect documents,
without nesting everything under one ``parameters`` object.

Optional fields (``X | None``) keep ``None`` out of the form's schema: the UI offers the field, not a "type None"
alternative, and leaving it empty means the default. A field whose values come from the inventory (a database, a
model) lists the inventory's names as choices when the settings can be read where the schema is built (the worker
or the machine running ``prefect deploy``).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, Field, GetJsonSchemaHandler, ValidationError
from pydantic.fields import FieldInfo
from pydantic.json_schema import SkipJsonSchema

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")

Inventory = Literal["databases", "markets", "tables", "rules", "hosts", "redis", "services", "config_groups"]


_NAMES: dict[tuple[Any, ...], dict[str, list[str]] | None] = {}


def _inventory() -> dict[str, list[str]] | None:
    """Every kind's names, read once per settings source (the config file as last modified, the RUNBOOKS_
    environment): importing the flows builds every schema, and each would otherwise read the settings again. None,
    with one warning, when the settings cannot be read here (then the fields stay free text)."""
    import logging
    import os

    from runbooks.core.errors import RunbookError
    from runbooks.settings import config_path, load_settings

    path = config_path()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    key = (str(path), stamp, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("RUNBOOKS_"))))
    if key not in _NAMES:
        try:
            settings = load_settings()
        except (RunbookError, OSError, ValueError) as exc:
            logging.getLogger("runbooks").warning("Parameter forms offer no inventory choices: the settings cannot "
                                                  "be read here (%s)", str(exc).splitlines()[0][:200])
            _NAMES[key] = None
        else:
            _NAMES[key] = {
                "databases": sorted(settings.databases),
                "markets": sorted(name for name, market in settings.markets.items() if market.gates),
                "tables": sorted(table.key for table in settings.freshness.tables),
                "rules": sorted(rule.name for rule in settings.cleanup.rules),
                "hosts": sorted(settings.hosts),
                "redis": sorted(settings.redis),
                "services": settings.services.names(),
                "config_groups": settings.config_rollback.names()}
    return _NAMES[key]


def _inventory_names(kind: Inventory) -> list[str]:
    """The names the settings configure of ``kind``; none when the settings cannot be read here."""
    names = _inventory()
    return list(names[kind]) if names else []


@dataclass(frozen=True)
class InventoryChoices:
    """Annotated metadata: offer the inventory's names as the form's choices, e.g.
    ``Annotated[InventoryName, InventoryChoices("databases")]``. Read when the schema is built (the worker loading the
    flow, ``prefect deploy``), so a deployment's form lists the names configured where it was deployed; with
    ``enforce_parameter_schema`` the server refuses others. Validation is unchanged: the run checks the name
    against its own settings."""

    kind: Inventory

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        schema = handler(core_schema)
        names = _inventory_names(self.kind)
        if names:
            schema["enum"] = names
        return schema


class InvalidParameters(ValueError):
    """The fields were each valid but do not go together (a model validator refused them)."""


def _annotation(field: FieldInfo) -> Any:
    """The field's type with its constraints and description; ``X | None`` as ``X | SkipJsonSchema[None]``: it
    still accepts None, but the schema (the form) shows only ``X``, with ``X``'s constraints."""
    described = Field(description=field.description, json_schema_extra=field.json_schema_extra)
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation):
        rest = tuple(a for a in get_args(annotation) if a is not type(None))
        inner = Union[rest] if len(rest) > 1 else rest[0]  # noqa: UP007 - built at run time from a tuple
        if field.metadata:
            inner = Annotated[(inner, *field.metadata)]  # type: ignore[misc]
        return Annotated[Union[inner, SkipJsonSchema[None]], described]  # type: ignore[misc]  # noqa: UP007
    return Annotated[(annotation, *field.metadata, described)]


def _parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    if field.is_required():
        default: Any = inspect.Parameter.empty
    elif field.default_factory is not None:
        default = field.get_default(call_default_factory=True)
    else:
        default = field.default
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=_annotation(field))


def _docstring(body: Callable[..., Any], model: type[BaseModel]) -> str:
    """The body's docstring with a Google ``Args:`` section from the model: Prefect takes parameter descriptions
    from it where a schema has none of its own."""
    summary = inspect.getdoc(body) or inspect.cleandoc(model.__doc__ or "") or f"The {body.__name__} runbook."
    lines = [summary, "", "Args:"]
    for name, field in model.model_fields.items():
        lines.append(f"    {name}: {' '.join((field.description or name).split())}")
    return "\n".join(lines)


def fields_of(model: type[BaseModel]) -> inspect.Signature:
    """The keyword-only signature a flow taking ``model`` shows Prefect."""
    return inspect.Signature([_parameter(name, field) for name, field in model.model_fields.items()])


def takes(model: type[M]) -> Callable[[Callable[[M], R]], Callable[..., R]]:
    """Decorate a flow body ``body(params: Model)`` (below ``@flow``) so the flow takes the model's fields as named
    arguments; the model validates them (cross-field rules included) before the body runs. A combination the model
    refuses raises ``InvalidParameters``, one line naming the fields."""

    def wrap(body: Callable[[M], R]) -> Callable[..., R]:
        def flow_body(**given: Any) -> R:
            try:
                params = model.model_validate(given)
            except ValidationError as exc:
                from runbooks.frame.run import quiet_expected_failures

                quiet_expected_failures()
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {e['msg']}"
                                     for e in exc.errors())
                raise InvalidParameters(f"invalid parameters: {problems}") from None
            from runbooks.frame.run import _CURRENT, conclude_unexpected

            token = _CURRENT.set(None)
            try:
                return body(params)
            except Exception as exc:  # the frame concludes what the runbook did not expect: report, event, Failed
                state = conclude_unexpected(exc)
                if state is None:
                    raise
                return state  # type: ignore[return-value]
            finally:
                _CURRENT.reset(token)

        flow_body.__name__ = body.__name__
        flow_body.__qualname__ = body.__qualname__
        flow_body.__module__ = body.__module__
        flow_body.__doc__ = _docstring(body, model)
        signature = fields_of(model)
        flow_body.__signature__ = signature  # type: ignore[attr-defined]
        flow_body.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        flow_body.parameters_model = model  # type: ignore[attr-defined]
        return flow_body

    return wrap


def arguments(params: BaseModel) -> dict[str, Any]:
    """A validated model as the flow's keyword arguments (what ``runbooks run`` passes)."""
    return {name: getattr(params, name) for name in type(params).model_fields}


__all__ = ["InvalidParameters", "arguments", "fields_of", "InventoryChoices", "takes"]
