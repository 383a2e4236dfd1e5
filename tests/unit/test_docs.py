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


def _repository_format() -> str:
    return (ROOT / "docs" / "repository-format.md").read_text()


def test_repository_format_manifest_example_matches_the_code() -> None:
    """docs/repository-format.md's manifest example has exactly the fields drkit
    writes and reads (add a field to a record: document it there)."""
    import dataclasses
    import json
    import re

    from drkit.repository.manifest import (
        MANIFEST_FORMAT,
        MANIFEST_VERSION,
        ArtifactRecord,
        Manifest,
        SourceRecord,
    )

    doc = _repository_format()
    [example] = re.findall(r"```json\n(.*?)```", doc, re.S)
    data = json.loads(example)

    def names(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    assert set(data) == names(Manifest) | {"format", "version", "signature"}
    assert (data["format"], data["version"]) == (MANIFEST_FORMAT, MANIFEST_VERSION)
    assert all(set(s) == names(SourceRecord) for s in data["sources"])
    artifacts = [a for s in data["sources"] for a in s["artifacts"]] + [data["facts"]]
    assert all(set(a) == names(ArtifactRecord) for a in artifacts)
    # The placeholders stand for digests: the schema checks their shape.
    concrete = example.replace("<sha256 hex>", "0" * 64)
    manifest = Manifest.from_json(concrete.encode(), "docs/repository-format.md")
    # What the code writes for it has the same keys as the example.
    assert set(json.loads(manifest.to_json())) | {"signature"} == set(data)


def test_repository_format_layout_and_constants_match_the_code() -> None:
    from drkit.locks import LOCK_FORMAT, lock_key
    from drkit.pipeline.codec import FORMAT
    from drkit.repository.factory import StoreOptions
    from drkit.repository.layout import (
        FACTS,
        MANIFEST,
        REPO_FORMAT_VERSION,
        REPO_MARKER,
        object_key,
    )
    from drkit.sources.pgsql import dump_artifact
    from drkit.sources.postgres import GLOBALS

    doc = _repository_format()
    assert doc.startswith(f"# Repository format (version {REPO_FORMAT_VERSION})")
    for key in (
        REPO_MARKER,
        object_key("<host>", "<id>", MANIFEST),
        object_key("<host>", "<id>", FACTS),
        object_key("<host>", "<id>", "<source>/<artifact>"),
        lock_key("<host>"),
        "<host>/drills/<drill-id>.json",
    ):
        assert f"<prefix>/{key} " in doc, key
    assert f"- `{FORMAT}`:" in doc  # every artifact format the code writes is described
    for name in (GLOBALS, dump_artifact("custom"), dump_artifact("plain"), LOCK_FORMAT):
        assert f"`{name}`" in doc, name
    part_mib = StoreOptions().part_size >> 20
    assert f"bounded parts ({part_mib} MiB" in doc
