"""`flip-imaging anonymize`: run a DicomEdit 6 script over DICOM files and folders.

Each input is read strictly (truncated or malformed files are refused), edited, and written to the
output folder through a temp file + fsync + rename, so an output file is either complete or absent.
Messages name files and reasons, never element values (no PHI on the terminal or in logs).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .engine import Script
from .errors import DicomEditRuntimeError, DicomEditSyntaxError
from .fileio import BadDicomFile, read_checked, write_atomic

app = typer.Typer(add_completion=False, help="De-identify DICOM files with a DicomEdit 6 script.")


@dataclass
class Summary:
    done: list[Path] = field(default_factory=list)
    rejected: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _parse_vars(var: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in var:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise typer.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--var")
        out[name] = value
    return out


def _collect(inputs: list[Path], out: Path, summary: Summary) -> list[tuple[Path, Path]]:
    """(source, destination) pairs; folders recurse and keep their layout under `out`."""
    jobs: list[tuple[Path, Path]] = []
    seen: dict[Path, Path] = {}
    out_resolved = out.resolve()
    for inp in inputs:
        if inp.is_dir():
            base = inp.resolve()
            files = sorted(p for p in inp.rglob("*") if p.is_file() and not p.name.startswith("."))
            pairs = []
            for p in files:
                rp = p.resolve()
                if out_resolved == rp.parent or out_resolved in rp.parents:
                    continue  # never re-read our own output folder when it sits inside an input
                pairs.append((p, out / base.name / rp.relative_to(base)))
        elif inp.is_file():
            pairs = [(inp, out / inp.name)]
        else:
            summary.failed.append((inp, "no such file or folder"))
            continue
        for src, dest in pairs:
            key = dest.resolve()
            if key == src.resolve():
                summary.failed.append((src, "output would overwrite the input"))
            elif key in seen:
                summary.failed.append((src, f"output name collides with {seen[key]}"))
            else:
                seen[key] = src
                jobs.append((src, dest))
    return jobs


def _process(script: Script, src: Path, dest: Path, variables: dict[str, str], summary: Summary) -> None:
    try:
        ds = read_checked(src)
    except BadDicomFile as e:
        summary.failed.append((src, str(e)))
        return
    except OSError as e:
        summary.failed.append((src, f"cannot read file ({e.strerror or type(e).__name__})"))
        return
    try:
        result = script.apply(ds, variables=variables)
    except DicomEditRuntimeError as e:
        # the script did not finish: the file is not de-identified, so nothing is written
        summary.failed.append((src, f"script error at line {e.line}: {e.reason}"))
        return
    if result.rejected:
        summary.rejected.append(src)
        return
    try:
        write_atomic(ds, dest)
    except Exception as e:
        summary.failed.append((src, f"cannot write output ({type(e).__name__})"))
        return
    summary.done.append(src)


@app.command("anonymize")
def anonymize_command(
    script: Path = typer.Option(..., "--script", "-s", help="DicomEdit 6 script (.das)", dir_okay=False),
    inputs: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)"),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder", file_okay=False),
    var: list[str] = typer.Option([], "--var", help="Script variable NAME=VALUE (project, subject, session)"),
) -> None:
    """De-identify DICOM files with a DicomEdit 6 script, writing complete files or none."""
    console = Console(stderr=True)
    variables = _parse_vars(var)
    try:
        text = script.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        console.print(f"[red]cannot read script {script}: {type(e).__name__}[/]")
        raise typer.Exit(2) from None
    try:
        parsed = Script.parse(text)
    except DicomEditSyntaxError as e:
        console.print(f"[red]script {script} is invalid: {e}[/]")
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    jobs = _collect(inputs, out, summary)
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # pydicom warnings can quote values (PHI)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Progress(TextColumn("anonymizing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("anonymize", total=len(jobs))
            for src, dest in jobs:
                _process(parsed, src, dest, variables, summary)
                progress.advance(task)
    _report(console, summary, out)
    if summary.failed:
        raise typer.Exit(1)


def _report(console: Console, summary: Summary, out: Path) -> None:
    table = Table(title="anonymize summary", show_header=True)
    table.add_column("result")
    table.add_column("files", justify="right")
    table.add_row("done", str(len(summary.done)))
    table.add_row("rejected by script", str(len(summary.rejected)))
    table.add_row("failed", str(len(summary.failed)))
    console.print(table)
    for path in summary.rejected:
        console.print(f"rejected: {path}", soft_wrap=True)
    for path, reason in summary.failed:
        console.print(f"[red]failed[/]: {path}: {reason}", soft_wrap=True)  # no wrapping: greppable
    if summary.done:
        console.print(f"output in {out}", soft_wrap=True)
