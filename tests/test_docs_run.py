"""Every ``python`` and ``bash`` block of README.md and docs/*.md runs, as a reader would run it.

Each Markdown file is one reader at one notebook: its blocks run top to bottom in one namespace, in a
fresh directory with a fresh store (``NBDEPLOY_HOME=./.nbdeploy``), and whatever servers they
started are shut down after its last block. A python block with IPython syntax (``%deploy``,
``%load_ext``, ``!cmd``) runs in an IPython shell, as a notebook cell does; the others run as plain
Python, in the same namespace. A bash block runs with ``bash -e -o pipefail`` in the same directory,
with this environment's ``bin`` (and so the ``nbdeploy`` command) first on ``PATH``.

Blocks are found with Sybil's Markdown lexers, so a new block or a new page runs without any change
here. A block that cannot run here (it installs things, needs Docker or a cluster, or runs in the
foreground until stopped) carries Sybil's marker, with its reason, on the line before its fence:
``<!-- skip: next "needs Docker" -->``. Setup a reader does not need to see goes in an
``<!-- invisible-code-block: python ... -->`` comment. Each block is one test named by file and line
(``test_doc_block[docs/library.md:86]``); running one block runs the blocks before it in its file first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unittest
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sybil import Document, Example, Region
from sybil.parsers.markdown import CodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BASH_TIMEOUT = 120  # seconds; no block that runs here needs more than a few
IPYTHON_SYNTAX = re.compile(r"^\s*[%!]", re.MULTILINE)
SKIPPED = (unittest.SkipTest, pytest.skip.Exception)


class DocRun(Document):
    """One Markdown file being read: its namespace, directory, store and (once needed) IPython shell."""

    directory: Path
    home: Path
    shell = None
    next_index = 0  # the examples before it have run
    failed_at: int | None = None  # the line of the block that failed
    closed = False

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["NBDEPLOY_HOME"] = str(self.home)
        return env

    def ipython(self):
        if self.shell is None:
            from IPython.core.interactiveshell import InteractiveShell
            from traitlets.config import Config

            config = Config()
            config.HistoryManager.enabled = False  # nothing written to ~/.ipython
            self.shell = InteractiveShell(config=config, user_ns=self.namespace)
        return self.shell

    def close(self) -> None:
        """Stop what the blocks started: live monitors, the file's server, a server of any store beside it."""
        if self.closed:
            return
        self.closed = True
        import nbdeploy
        from nbdeploy.api import stop_monitors

        stop_monitors()  # a live monitor refreshes from a thread until stopped, as when a notebook closes
        stores = {p.parent for p in self.directory.rglob("nbdeploy.db")} | {self.home}
        for store in sorted(stores):
            if (store / "nbdeploy.db").exists():
                nbdeploy.shutdown(str(store))


def _where(example: Example) -> str:
    return f"{Path(example.path).relative_to(ROOT)}, line {example.line}"


def run_python(example: Example) -> None:
    doc: DocRun = example.document  # type: ignore[assignment]
    source = str(example.parsed)
    if IPYTHON_SYNTAX.search(source):
        result = doc.ipython().run_cell(source, store_history=True)
        if not result.success:
            error = result.error_before_exec or result.error_in_exec
            raise AssertionError(f"{_where(example)}: the cell raised {type(error).__name__}: {error}") from error
        return
    # Padded so that a traceback names the line of the Markdown file.
    exec(compile("\n" * example.line + source, example.path, "exec"), doc.namespace)


def run_bash(example: Example) -> None:
    doc: DocRun = example.document  # type: ignore[assignment]
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", str(example.parsed)],
        cwd=doc.directory, env=doc.env(), capture_output=True, text=True, timeout=BASH_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    output = f"\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, f"{_where(example)}: bash exited with {proc.returncode}{output}"
    # curl exits 0 on a 4xx answer: an nbdeploy error body in the output is a broken example too.
    assert '{"error"' not in proc.stdout, f"{_where(example)}: the server answered with an error{output}"


PARSERS = [
    SkipParser(),
    CodeBlockParser("python", run_python),
    CodeBlockParser("bash", run_bash),
    CodeBlockParser("sh", run_bash),
]


def _parse(path: Path) -> DocRun:
    return DocRun.parse(str(path), *PARSERS)  # type: ignore[return-value]


def _is_block(region: Region) -> bool:
    return region.evaluator in (run_python, run_bash)


def _blocks() -> Iterator[pytest.param]:
    for path in DOC_FILES:
        for index, example in enumerate(_parse(path).examples()):
            if _is_block(example.region):
                yield pytest.param(path, index, id=f"{path.relative_to(ROOT)}:{example.line}")


@pytest.fixture(scope="module")
def reading(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path], DocRun]]:
    """Each file is parsed and given its directory once; whatever is still running is stopped at the end."""
    runs: dict[Path, DocRun] = {}

    def start(path: Path) -> DocRun:
        if path not in runs:
            doc = _parse(path)
            doc.directory = tmp_path_factory.mktemp(path.stem)
            doc.home = doc.directory / ".nbdeploy"
            runs[path] = doc
        return runs[path]

    yield start
    for doc in runs.values():
        doc.close()


@pytest.mark.server
@pytest.mark.parametrize(("path", "index"), list(_blocks()))
def test_doc_block(path: Path, index: int, reading: Callable[[Path], DocRun], monkeypatch: pytest.MonkeyPatch) -> None:
    doc = reading(path)
    examples = list(doc.examples())
    monkeypatch.chdir(doc.directory)
    monkeypatch.setenv("NBDEPLOY_HOME", str(doc.home))
    try:
        while doc.next_index <= index:
            if doc.failed_at is not None:
                pytest.skip(f"the block at line {doc.failed_at} of {path.name} failed")
            example = examples[doc.next_index]
            doc.next_index += 1
            try:
                example.evaluate()
            except SKIPPED as skipped:  # a block marked to skip
                if doc.next_index - 1 == index:
                    pytest.skip(f"{_where(example)}: {skipped}")
            except BaseException:
                doc.failed_at = example.line
                raise
    finally:
        if doc.failed_at is not None or not any(_is_block(e.region) for e in examples[doc.next_index :]):
            doc.close()
