"""Docs that are generated from the code must match it."""

from pathlib import Path

from nbdeploy.magics import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_magic_reference_matches_the_parsers():
    assert (ROOT / "docs" / "magics.md").read_text() == reference_markdown(), (
        "docs/magics.md is stale: run `python -m nbdeploy.magics > docs/magics.md`"
    )


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.splitlines() if ln and not ln.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("-m nbdeploy.demo") and commands[1].endswith("-m pytest")
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(commands[1])


def test_committed_notebooks_carry_no_saved_widget_state():
    # With saved widget state, nbconvert's HTML shows the widget view (drawn only by a renderer
    # from a CDN) instead of the text/html twin every nbdeploy panel also sends.
    import json

    for path in (ROOT / "notebooks").glob("*.ipynb"):
        assert "widgets" not in json.loads(path.read_text())["metadata"], f"{path.name}: clear its widget state"


def test_every_server_setting_is_documented():
    from dataclasses import fields

    from nbdeploy.serve.config import ServeConfig

    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f.name for f in fields(ServeConfig) if f"NBDEPLOY_{f.name.upper()}" not in text]
    assert not missing, f"docs/configuration.md does not document: {missing}"
