"""Drill-file problems read like policy problems: ``<file>: <key path>: <message>``,
every one at once, in the validator's words (issue 23, item 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drkit.drills.spec import load_spec
from drkit.errors import PolicyError
from tests.helpers import write_policy


def test_drill_file_problems_are_worded_like_policy_problems(tmp_path: Path) -> None:
    path = tmp_path / "h1.toml"
    path.write_text(
        'host = "h1"\ncolour = "red"\n'
        '[[sql]]\nname = "rows"\nsource = "db"\nquery = "select 1"\n'
        '[[command]]\nname = "x"\nrun = []\n'
    )
    with pytest.raises(PolicyError) as err:
        load_spec(path)
    assert sorted(err.value.problems) == [
        f"{path}: colour: unknown key",
        f"{path}: command[0].run: List should have at least 1 item after validation, not 0",
        f"{path}: sql[0].expect: field required",
    ]


def test_skip_names_data_sources_of_the_policy_and_leaves_one(tmp_path: Path, keys: Any) -> None:
    """``[skip]`` is checked against the host's policy before any drill: a name that is
    no data source (a typo, a provider snapshot) and skipping everything are refused,
    naming the drill file and the policy file; an empty reason is a schema error."""
    from drkit.actions.drill import load_specs
    from drkit.policy.loader import load_policy

    sources = [
        {"kind": "env", "name": "env", "paths": ["/srv/*.env"]},
        {"kind": "files", "name": "conf", "paths": ["/etc/app"]},
    ]
    repo = {"url": (tmp_path / "r").as_uri()}
    policy_file = write_policy(tmp_path / "policy.toml", "h1", repo, [keys.recipient], sources)
    policy = load_policy(policy_file)
    drills = tmp_path / "drills"
    drills.mkdir()
    spec = drills / "h1.toml"

    spec.write_text('host = "h1"\n[skip]\nconf = "needs docker"\n')
    assert load_specs([policy], drills)["h1"].skip == {"conf": "needs docker"}

    spec.write_text('host = "h1"\n[skip]\nconfs = "typo"\nconf = "y"\n')
    with pytest.raises(PolicyError) as err:
        load_specs([policy], drills)
    assert err.value.problems == [
        f"{spec}: skip.confs: not a data source of {policy_file} (it has: conf, env)",
    ]
    spec.write_text('host = "h1"\n[skip]\nenv = "x"\nconf = "y"\n')
    with pytest.raises(PolicyError) as err:
        load_specs([policy], drills)
    assert err.value.problems == [f"{spec}: skip: every data source of {policy_file}"]

    spec.write_text('host = "h1"\n[skip]\nconf = ""\n')
    with pytest.raises(PolicyError) as err:
        load_specs([policy], drills)
    assert err.value.problems[0].startswith(f"{spec}: skip.conf: String should have at least 1")
