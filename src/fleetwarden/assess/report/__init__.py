"""Render an :class:`Assessment` to the six report files, all or nothing.

Invariant: every output is rendered into a temporary directory next to OUT_DIR first;
only when all six exist are they moved into OUT_DIR (``os.replace``, same file system).
A failure while rendering leaves OUT_DIR exactly as it was: no partial report files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from fleetwarden.assess.engine import Assessment
from fleetwarden.assess.errors import ReportError
from fleetwarden.assess.report import data, html, markdown, ocsf, sarif

__all__ = ["OUTPUTS", "write_reports"]

OUTPUTS = (
    "findings.json",
    "findings.sarif",
    "findings.ocsf.jsonl",
    "report.md",
    "report.html",
    "report.pdf",
)


def render_pdf(html_text: str, target: Path) -> None:
    # WeasyPrint is imported late: it pulls in Pango, which the rest does not need
    try:
        from weasyprint import HTML  # type: ignore[import-untyped]
    except (ImportError, OSError) as exc:
        raise ReportError(f"PDF rendering needs WeasyPrint and Pango: {exc}") from exc
    HTML(string=html_text).write_pdf(str(target))


def write_reports(
    a: Assessment,
    out_dir: Path,
    *,
    pdf: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".assess-", dir=out_dir.parent))
    try:

        def step(name: str) -> None:
            if progress is not None:
                progress(name)

        step("findings.json")
        with (tmp / "findings.json").open("w", encoding="utf-8") as fh:
            json.dump(data.to_json(a), fh, indent=1, default=str)
        step("findings.sarif")
        with (tmp / "findings.sarif").open("w", encoding="utf-8") as fh:
            json.dump(sarif.to_sarif(a), fh, indent=1)
        step("findings.ocsf.jsonl")
        with (tmp / "findings.ocsf.jsonl").open("w", encoding="utf-8") as fh:
            for line in ocsf.lines(a):
                fh.write(line + "\n")
        step("report.md")
        (tmp / "report.md").write_text(markdown.render(a), encoding="utf-8")
        step("report.html")
        text = html.render(a)
        (tmp / "report.html").write_text(text, encoding="utf-8")
        if pdf:
            step("report.pdf")
            render_pdf(text, tmp / "report.pdf")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in OUTPUTS:
            src = tmp / name
            if src.exists():
                os.chmod(src, 0o644)
                os.replace(src, out_dir / name)
                written.append(out_dir / name)
        return written
    except ReportError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise ReportError(f"could not write the reports: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
