"""The README's examples run as written, on the bundled demo data: a README that drifts from the
program fails the suite.

Every fenced code block of README.md is read with the section it sits in. What a block is, its
language says: ``bash`` and ``python`` blocks run; ``yaml`` and ``json`` blocks must parse (and a
YAML pipeline must load as one); ``text`` is program output or a listing. A block without a
language fails. Two markers, HTML comments on the lines just above a block, change what runs:

- ``<!-- not run: REASON -->``: the block is skipped, with REASON (a download, a GPU, a long
  training, the test suite itself).
- ``<!-- test with: `A` -> `B` (why) -->``: the block runs with every A replaced by B (a model
  that needs no download, fewer training steps). A must occur in the block.

The blocks run in README order in one working folder, as a reader would run them: it starts
with ``medseg demo-data data_manifests`` and a copy of ``pipelines/``; ``MEDSEG_HOME`` lies
inside it, so nothing reaches the user's caches. ``medseg`` and ``python`` are this checkout's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from medseg.cli import build_parser
from medseg.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "docs"))
import readme_report  # noqa: E402  (docs/readme_report.py: `make readme-report`)
RUNS = {"bash", "python"}
PARSED = {"yaml", "json"}
NOT_CODE = {"text"}
BLOCK_TIMEOUT_S = 900

_NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.+?)\s*-->")
_TEST_WITH = re.compile(r"<!--\s*test with:\s*`(?P<old>[^`]+)`\s*->\s*`(?P<new>[^`]*)`\s*(?:\((?P<why>[^)]*)\))?\s*-->")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    section: str  # the heading it sits under
    language: str
    code: str
    not_run: str | None
    substitutions: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.language or 'none'}-{re.sub(r'[^A-Za-z0-9]+', '-', self.section).strip('-')[:30]}"

    def runnable_code(self) -> str:
        """The code with the README's own substitutions applied (each must match)."""
        code = self.code
        for old, new in self.substitutions:
            assert old in code, f"README.md:{self.line}: test with `{old}`: not in the block"
            code = code.replace(old, new)
        return code


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` with their section and markers."""
    lines = text.splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        if not line.startswith("```"):
            i += 1
            continue
        start, language = i, line[3:].strip()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        comments = []
        for above in reversed(lines[:start]):
            if not above.startswith("<!--"):
                break
            comments.append(above)
        not_run = next((m["reason"] for c in comments if (m := _NOT_RUN.search(c))), None)
        substitutions = tuple((m["old"], m["new"]) for c in reversed(comments) if (m := _TEST_WITH.search(c)))
        code = "\n".join(lines[start + 1:end]) + "\n"
        blocks.append(Block(start + 1, section, language, code, not_run, substitutions))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_reading_the_readme_markers():
    text = ("# A\n```bash\necho a\n```\n## B\n<!-- not run: needs a GPU -->\n```python\nimport torch\n```\n"
            "<!-- test with: `--steps 150` -> `--steps 2` (fast) -->\n<!-- test with: `tiny` -> `untrained` -->\n"
            "```bash\nmedseg x --steps 150 --model tiny\n```\n```\nno language\n```\n")
    a, b, c, d = readme_blocks(text)
    assert (a.line, a.section, a.language, a.code, a.not_run, a.substitutions) == (2, "A", "bash", "echo a\n", None, ())
    assert (b.section, b.language, b.not_run) == ("B", "python", "needs a GPU")
    assert c.substitutions == (("--steps 150", "--steps 2"), ("tiny", "untrained"))
    assert c.runnable_code() == "medseg x --steps 2 --model untrained\n"
    assert d.language == "" and d.not_run is None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A folder laid out as the README assumes (demo data written, pipelines/), and the environment to run in."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "pipelines", work / "pipelines")
    bin_dir = work / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "medseg"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m medseg.cli "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "MEDSEG_EMBEDDINGS"}  # the store as a user has it: on
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT),
               MEDSEG_HOME=str(work / ".medseg"))
    done = subprocess.run(["medseg", "demo-data", "data_manifests"], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return work, env


def _skip_reason(block: Block) -> str | None:
    if block.not_run:
        return f"README.md:{block.line}: not run: {block.not_run}"
    if block.language in NOT_CODE:
        return f"README.md:{block.line}: {block.language}, not code"
    return None


def test_every_picture_the_readme_shows_is_in_the_repository():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    assert len(pictures) >= 6
    assert [p for p in pictures if p not in tracked] == []


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_has_a_language(block):
    assert block.language in RUNS | PARSED | NOT_CODE, (
        f"README.md:{block.line}: code block with language {block.language!r}: mark it bash or python (run), "
        "yaml or json (parsed) or text (output, listings)")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in PARSED], ids=lambda b: b.id)
def test_readme_data_block_parses(block, tmp_path):
    if reason := _skip_reason(block):
        pytest.skip(reason)
    data = yaml.safe_load(block.runnable_code())  # JSON is YAML
    assert isinstance(data, dict), f"README.md:{block.line}: not a mapping"
    if block.language == "yaml" and "methods" in data:  # a pipeline: it must load as one, next to the manifests
        (tmp_path / "pipelines").mkdir()
        (tmp_path / "data_manifests").mkdir()
        shutil.copy(ROOT / "data_manifests" / "demo.json", tmp_path / "data_manifests")
        path = tmp_path / "pipelines" / "readme.yaml"
        path.write_text(block.runnable_code(), encoding="utf-8")
        assert load_pipeline(path).methods


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in RUNS], ids=lambda b: b.id)
def test_readme_block_runs_as_written(block, workdir):
    if reason := _skip_reason(block):
        pytest.skip(reason)
    work, env = workdir
    command = ["bash", "-euo", "pipefail", "-c"] if block.language == "bash" else [sys.executable, "-c"]
    done = subprocess.run([*command, block.runnable_code()], cwd=work, env=env, capture_output=True, encoding="utf-8",
                          timeout=BLOCK_TIMEOUT_S)
    assert done.returncode == 0, (f"README.md:{block.line} ({block.section}) exited with {done.returncode}:\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


# --- the README's statements about the command line -------------------------------------------
def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def test_command_table_lists_every_subcommand():
    text = README.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `medseg ([^`]+)` \|", text, flags=re.MULTILINE)
    listed = {row.split()[0]: row for row in rows}
    commands = _subcommands(build_parser())
    assert sorted(listed) == sorted(commands), "the README's command table and `medseg --help` differ"
    for name, parser in commands.items():
        for action in _subcommands(parser):
            assert re.search(rf"\b{action}\b", listed[name]), f"`medseg {name} {action}` is not in the command table"


def test_demo_data_case_count_agrees_with_the_program():
    text = README.read_text(encoding="utf-8")
    stated = re.search(r"`data_manifests/demo\.json` → `DIR/demo/`: N \(default (\d+)\)", text)
    split = re.search(r"the last half test \((\d+) and (\d+) by default\)", text)
    default = next(a.default for a in _subcommands(build_parser())["demo-data"]._actions if a.dest == "cases")
    assert stated and int(stated[1]) == default
    assert split and (int(split[1]), int(split[2])) == (default - default // 2, default // 2)
    assert f"{default} phantoms: {default - default // 2} train, {default // 2} test" in text  # the command table


# --- the sample report: generated by `make readme-report`, never copied by hand ------------------
def test_sample_report_is_the_generated_excerpt():
    """A block whose marker says docs/readme_report.py wrote it is what it wrote: its digest matches,
    and it is an excerpt of itself (the report's opening and kept sections, quoted). A block copied
    by hand says so in its marker."""
    begin, _, body = readme_report.find_block(README.read_text(encoding="utf-8"))
    if not begin["origin"].startswith(readme_report.GENERATED):
        assert "copied by hand" in begin["origin"], "a sample report not written by make readme-report must say so"
        pytest.skip(f"README.md's sample report is not generated yet: {begin['origin']}")
    assert begin["digest"] == readme_report.digest(body), (
        "README.md's sample report was edited by hand: run `make demo` (or `make readme-report` on its results)")
    report = "\n".join(line.removeprefix(">").removeprefix(" ") for line in body.splitlines())
    assert readme_report.excerpt(report) == body
    assert "Report made " in body and "## Dice per label" in body  # which run made the numbers, and the numbers


def test_the_excerpt_shows_paths_under_the_readmes_folder_relative_to_it():
    report = "# medseg evaluation: demo\n\n## Methods\n\n| maskrcnn | Mask R-CNN /home/u/medseg/results/demo/model |\n"
    assert readme_report.excerpt(report, root=Path("/home/u/medseg")) == (
        "> # medseg evaluation: demo\n>\n> ## Methods\n>\n> | maskrcnn | Mask R-CNN results/demo/model |\n")
    assert "/home/u/medseg/results" in readme_report.excerpt(report, root=Path("/home/other"))


@pytest.mark.slow
def test_readme_report_puts_a_real_report_into_the_readme(workdir, tmp_path):
    """A real `medseg run` report (the oracle on 2 demo test phantoms) becomes the README's excerpt;
    the text around the markers is left alone."""
    work, env = workdir
    pipeline = tmp_path / "oracle.yaml"
    pipeline.write_text(f"name: oracle\ncohort: {work / 'data_manifests' / 'demo.json'}\n"
                        "cases: [phantom_004, phantom_005]\nmethods:\n  truth: {type: oracle, baseline: true}\n"
                        "report: {overlays: 0, bootstrap: 100}\n", encoding="utf-8")
    done = subprocess.run(["medseg", "run", str(pipeline), "--out", str(tmp_path / "out"), "--no-progress"], cwd=work,
                          env=env, capture_output=True, encoding="utf-8")
    assert done.returncode == 0, done.stderr
    readme = tmp_path / "README.md"
    readme.write_text("# x\nbefore\n<!-- sample-report: begin (sha256 000000000000; copied by hand) -->\n> old\n"
                      "<!-- sample-report: end -->\nafter\n", encoding="utf-8")
    report = tmp_path / "out" / "report.md"
    assert readme_report.main([str(report), str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# x\nbefore\n<!-- sample-report: begin (sha256 ") and text.endswith("end -->\nafter\n")
    begin, _, body = readme_report.find_block(text)
    assert begin["origin"].startswith(readme_report.GENERATED) and begin["digest"] == readme_report.digest(body)
    assert "> # medseg evaluation: oracle" in body and "> ## Dice per label" in body and "Report made " in body
    assert "| truth | 1.000" in body and "## Dice per case" not in body and "## Surface metrics" not in body
    assert readme_report.main([str(report), str(readme)]) == 0 and readme.read_text(encoding="utf-8") == text
