"""Render the policy reference (docs/policy.md) from the models themselves,
so the documentation cannot drift from what validation accepts."""

from __future__ import annotations

import inspect
import json
import re
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from drkit.policy import models

HEADER = """# Policy reference

One TOML file per host in `policies/`. This page is generated from
`drkit/policy/models.py` (`python -m drkit.policy.reference > docs/policy.md`);
a test fails when it is out of date.

Secret fields (marked *secret*) take a reference, never a value:
`env:NAME` (an environment variable) or `file:/path` (a file's content).
A literal value there is refused by `drkit policy validate`.

Durations are written like `90s`, `45m`, `26h`, `7d`, `2w`; schedules are
5-field cron expressions.

`drkit policy validate` reports every problem at once (exit 2 if any): the
schema, then what `backup` would refuse that this machine can tell without
contacting the host: the repository URL's shape, `recipients_file` and
`signers_file` (readable UTF-8, every line a key), the SSH `identity_file`
and `known_hosts` (present, unless `accept_new_host_key`), and each secret
reference (a `file:` one must be readable UTF-8). Warnings do not fail it: an
`env:` variable unset here (cron may set it), a schedule that comes due more
often than the 10 minutes `backup --due` runs at, and this machine's signing
key missing from `signers` (right on a machine that only restores).
"""


# Value checks (policy/checks.py) by the name the reference shows for their type.
_CHECKED = {
    "check_duration": "duration",
    "check_positive_duration": "duration",
    "check_cron": "cron",
    "check_absolute_path": "absolute path",
    "check_recipient": "recipient",
    "check_api_endpoint": "URL",
}
_ANNOTATED = re.compile(r"Annotated\[str, AfterValidator\(func=<function (\w+) at 0x[0-9a-f]+>\)\]")


def _type_name(info: FieldInfo) -> str:
    text = str(info.annotation).replace("typing.", "").replace("drkit.policy.models.", "")
    text = text.replace("<class '", "").replace("'>", "")
    if any(getattr(m, "__name__", "") == "check_reference" for m in _metadata(info)):
        table = get_origin(info.annotation) is dict  # written in TOML as an inline table
        return "table of *secret* references" if table else "*secret* reference"
    text = _ANNOTATED.sub(lambda m: _CHECKED.get(m.group(1), "str"), text)
    text = re.sub(r"^Optional\[(.*)\]$", r"\1 | None", text)
    direct = [getattr(m, "func", m) for m in info.metadata]  # a non-optional Annotated field
    names = [_CHECKED[n] for f in direct if (n := getattr(f, "__name__", "")) in _CHECKED]
    if names and text == "str":
        return names[0]
    if text.startswith("list[Annotated[PostgresConfig"):
        return "array of tables (below)"
    choices = re.fullmatch(r"tuple\[Literal\[(.*)\], \.\.\.\]", text)
    if choices:  # written in TOML as an array of strings
        names = [c.strip().strip("'") for c in choices.group(1).split(",")]
        return "array of " + ", ".join(f'"{n}"' for n in names)
    return text


def _metadata(info: FieldInfo) -> list[Any]:
    out = []
    for m in info.metadata:
        out.append(getattr(m, "func", m))
    for arg in get_args(info.annotation):
        for m in getattr(arg, "__metadata__", ()):
            out.append(getattr(m, "func", m))
    return out


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return f"`{info.default_factory()}`"  # type: ignore[call-arg]
    if isinstance(info.default, BaseModel):
        return "(table)"
    if isinstance(info.default, tuple):
        return f"`{json.dumps(list(info.default))}`"  # TOML array syntax
    return f"`{info.default!r}`" if info.default is not None else "-"


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        desc = (info.description or "").replace("|", "\\|")
        rows.append(
            f"| `{name}` | {_type_name(info).replace('|', 'or')} | {_default(info)} | {desc} |"
        )
    return rows


def render() -> str:
    out = [HEADER, "## Top level", "", *_table(models.Policy), ""]
    for title, model in (
        ("[connection]", models.Connection),
        ("[repository]", models.RepositoryConfig),
        ("[encryption]", models.Encryption),
        ("[retention]", models.Retention),
        ("[notify]", models.Notify),
    ):
        out += [f"## {title}", "", inspect.cleandoc(model.__doc__ or ""), "", *_table(model), ""]
    out += [
        "## [[source]]",
        "",
        "Keys every source takes:",
        "",
        *_table(models.SourceConfigBase),
        "",
    ]
    base = set(models.SourceConfigBase.model_fields)
    for model in get_args(get_args(models.SourceConfig)[0]):
        kind = get_args(model.model_fields["kind"].annotation)[0]
        out += [f'### kind = "{kind}"', ""]
        doc = inspect.cleandoc(model.__doc__ or "")
        if doc:
            out += [doc, ""]
        out += [*_table(model, skip=(*base, "kind")), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
