from pathlib import Path

from drkit.policy.reference import render

ROOT = Path(__file__).resolve().parents[2]


def test_policy_reference_is_current() -> None:
    """docs/policy.md is generated from the models; regenerate it when they change:
    python -m drkit.policy.reference > docs/policy.md"""
    assert (ROOT / "docs" / "policy.md").read_text() == render()


def test_seed_policies_validate() -> None:
    from drkit.policy.loader import load_policies

    files = sorted((ROOT / "policies").glob("*.toml"))
    assert files, "policies/ must describe the seed hosts"
    hosts = [p.host for p in load_policies(files)]
    assert len(hosts) == len(set(hosts))


def test_each_seed_system_has_its_policy() -> None:
    from drkit.policy.loader import load_policy

    expected = {"vultr", "conversational-platform", "e2i-droplet", "visualkit-hetzner"}
    for host in expected:
        policy = load_policy(ROOT / "policies" / f"{host}.toml")
        assert policy.host == host
        assert policy.source, host
    readme = (ROOT / "policies" / "README.md").read_text()
    assert all(f"policies/{h}.toml" in readme for h in expected)


def test_each_seed_system_has_a_drill_file() -> None:
    from drkit.drills.spec import load_spec

    for path in sorted((ROOT / "policies").glob("*.toml")):
        spec = load_spec(ROOT / "restore_drills" / path.name)
        assert spec.host == path.stem
