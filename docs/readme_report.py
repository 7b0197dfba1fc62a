"""Put an excerpt of a run's report into README.md, so the README's sample report is generated, never copied by hand.

    python docs/readme_report.py results/demo/report.md README.md     (what `make readme-report` runs)

The excerpt is the report's opening (title, notes, cohort, code version and the time the report was
made: which run made the numbers) and its Methods, Dice, Mask AP, 3D instances, paired comparison
and Failures sections, quoted. It replaces what lies between the README's two markers:

    <!-- sample-report: begin (sha256 DIGEST; ...) -->
    > # medseg evaluation: demo
    ...
    <!-- sample-report: end -->

DIGEST is the SHA-256 (first 12 hex digits) of the quoted lines, so a hand edit of the excerpt
no longer matches it. tests/test_readme.py checks a block whose marker says it was written by
`make readme-report`; a block copied by hand must say so in its marker instead.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

KEPT_SECTIONS = ("Methods", "Dice per label", "Mask AP", "3D instances per case", "Paired comparison",
                 "Failures")
BEGIN = re.compile(r"^<!-- sample-report: begin \(sha256 (?P<digest>[0-9a-f]{12}); (?P<origin>[^>]*)\) -->$",
                   re.MULTILINE)
GENERATED = "written by `make readme-report`"
END = "<!-- sample-report: end -->"


def excerpt(report_md: str, *, root: Path | None = None) -> str:
    """The kept parts of a ``report.md``, each line quoted (``> ``); paths under ``root`` (the
    README's folder) are shown relative to it, so the excerpt does not name the machine it was made on."""
    if root is not None:
        report_md = report_md.replace(f"{root.as_posix()}/", "")
    kept, keep = [], True
    for line in report_md.strip("\n").splitlines():
        if line.startswith("## "):
            keep = line[3:].startswith(KEPT_SECTIONS)
        if keep:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(f"> {line}".rstrip() for line in kept) + "\n"


def digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:12]


def block(body: str, source: str) -> str:
    """``body`` between the markers, the begin marker naming its digest and where it came from."""
    return (f"<!-- sample-report: begin (sha256 {digest(body)}; {GENERATED} from {source}: do not edit by hand) -->\n"
            f"{body}{END}")


def find_block(readme: str) -> tuple[re.Match, int, str]:
    """The begin marker, the end of the block and the quoted body between the markers."""
    begins = list(BEGIN.finditer(readme))
    if len(begins) != 1 or readme.count(END) != 1:
        raise ValueError(f"README needs one '<!-- sample-report: begin (sha256 ...; ...) -->' line and one {END!r} "
                         "line")
    begin = begins[0]
    end = readme.index(END, begin.end())
    return begin, end + len(END), readme[begin.end() + 1:end]


def replace_block(readme: str, body: str, source: str) -> str:
    begin, end, _ = find_block(readme)
    return readme[:begin.start()] + block(body, source) + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a run's report.md (make demo: results/demo/report.md)")
    parser.add_argument("readme", type=Path, nargs="?", default=Path("README.md"))
    args = parser.parse_args(argv)
    if not args.report.is_file():
        parser.error(f"{args.report}: no such report; run `make demo` first")
    body = excerpt(args.report.read_text(encoding="utf-8"), root=args.readme.resolve().parent)
    text = args.readme.read_text(encoding="utf-8")
    try:
        new = replace_block(text, body, args.report.as_posix())
    except ValueError as error:
        parser.error(f"{args.readme}: {error}")
    args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: sample report from {args.report} ({'changed' if new != text else 'unchanged'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
