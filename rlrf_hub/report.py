"""`rlrf-hub report RUN`: a run's benchmark table, in the shape of SPEC's Table 2, from where the cards keep it.

RUN is a run's `output_dir` (its `published.json` names the adapter repo on a Hub, or the local adapter folders)
or an adapter repo id `<namespace>/<run>-adapter`, optionally `@revision` (default `main`).

Where the numbers live (see `rlrf_hub.cards.results`): the raw `EvaluationReport` of every model is
`eval/<label>/eval_results.json` in the adapter repo: M1, M2, ... and baselines, and M0 too, which has no adapter of
its own; the newest commit of `main` that holds results has all of them (an adapter commit of the next iteration
drops them from the tree until its own results are published). A run published to folders keeps the same files in
each `adapters/M<t>/`. The training method and pair count of each model come from the `rlrf:` block of its card
(adapter tag `iter-<t>`, or folder `adapters/M<t>/`).

The Hub is `--endpoint`, else `HF_ENDPOINT`; with neither, a run published to the offline Hub (its `output_dir`
has `hub.json` naming the store) is read through a `rlrf-hub hub serve` running over that store, or a server
started for the command.

Below the table, each model is compared with M0 on the same items where the results carry per-item outcomes
(`TaskResult.item_ids` / `item_values` in `eval_results.json`): the paired difference, its 95% interval and the
p-value (exact McNemar and Tango's score interval for GSM8K's right/wrong outcomes; see `stats`). When a benchmark
rests on fewer than 100 items per model the report says it is a plumbing check and points to the science recipe.

The tables are printed, and written with the plots to `--output` (default `<output_dir>/report`, or
`report-<repo name>` for a repo id): `report.md`, `results.png` (the table's columns across the models) and
`<task>.png` (every metric of a benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .evaluation.results import EvaluationReport
from .evaluation.stats import PAIRED_METHODS

if TYPE_CHECKING:
    from huggingface_hub import HfApi

_ITER_TAG = re.compile(r"^iter-(\d+)$")
_TRAINED = re.compile(r"^M[1-9]\d*$")
_OWN = re.compile(r"^M\d+$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
METHODS = {"dpo": "DPO", "rs": "RS"}


class ReportError(RuntimeError):
    """The run or its results cannot be found."""


@dataclass
class RunResults:
    """A run's evaluation results by model label, and the `rlrf:` lineage block of each of its adapters.

    `publish(reports)` adds `{label: report}` to the results on the card of the run's latest adapter.
    """

    name: str
    source: str
    reports: dict[str, EvaluationReport]
    lineage: dict[str, dict] = field(default_factory=dict)
    publish: Callable[[dict[str, EvaluationReport]], object] | None = None


# Reading (huggingface_hub and the cards are imported here, not at the top: `rlrf-hub --help` stays fast) -------------
def load_folder_run(adapter_dirs: list[Path], name: str) -> RunResults:
    """Results and lineage from local adapter folders; a later folder's report of a model wins."""
    from huggingface_hub import ModelCard

    from .cards.tables import order_labels
    from .publishing.results import publish_results_to_folder, read_folder_results

    reports: dict[str, EvaluationReport] = {}
    lineage: dict[str, dict] = {}
    locations: dict[str, str] = {}
    for folder in adapter_dirs:
        reports.update(read_folder_results(folder))
        readme = folder / "README.md"
        if readme.is_file():
            block = ModelCard.load(readme).data.get("rlrf") or {}
            if block.get("model_name"):
                lineage[block["model_name"]] = block
                locations[block["model_name"]] = str(folder)
    for label, location in locations.items():
        _add_cost(reports, label, location, None, None)
    source = ", ".join(str(folder) for folder in adapter_dirs)

    def publish(new: dict[str, EvaluationReport]) -> Path:
        return publish_results_to_folder(adapter_dirs[-1], new, carry_from=adapter_dirs[:-1])

    ordered = {label: reports[label] for label in order_labels(reports)}
    return RunResults(name, source, ordered, lineage, publish)


def load_hub_run(api: HfApi, repo_id: str, revision: str = "main") -> RunResults:
    """Results from the adapter repo (the newest commit reachable from `revision` that holds any) and the lineage
    of each tagged adapter."""
    from huggingface_hub import ModelCard
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    from .publishing.results import publish_results, read_hub_results

    try:
        reports, commit = read_hub_results(api, repo_id, revision)
        tags = [ref.name for ref in api.list_repo_refs(repo_id).tags if _ITER_TAG.match(ref.name)]
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise ReportError(f"{repo_id}@{revision} not found on {api.endpoint}") from err
    lineage = {}
    for tag in sorted(tags, key=lambda name: int(_ITER_TAG.match(name).group(1))):
        try:
            card = ModelCard.load(api.hf_hub_download(repo_id, "README.md", revision=tag))
        except HfHubHTTPError:
            continue
        block = card.data.get("rlrf") or {}
        label = block.get("model_name") or f"M{_ITER_TAG.match(tag).group(1)}"
        lineage[label] = block
        _add_cost(reports, label, repo_id, tag, api.endpoint)
    where = f"{api.endpoint.rstrip('/')}/{repo_id}" + (f"@{commit[:12]}" if commit else "")

    def publish(new: dict[str, EvaluationReport]) -> str:
        if not tags:
            raise ReportError(f"{repo_id} has no adapter tagged iter-<t> to put the results on")
        return publish_results(api, repo_id, max(tags, key=lambda name: int(_ITER_TAG.match(name).group(1))), new)

    return RunResults(repo_id, where, reports, lineage, publish)


def _add_cost(reports: dict[str, EvaluationReport], label: str, location: str, revision, endpoint) -> None:
    """Give a trained model's report the cost of producing it, read from its lineage when the report has none."""
    from .lineage import model_cost

    if label in reports and reports[label].cost is None:
        reports[label].cost = model_cost(location, revision, endpoint)


@contextlib.contextmanager
def _endpoint_for(output_dir: Path | None, endpoint: str | None) -> Iterator[str | None]:
    """The Hub to read: the one given, `HF_ENDPOINT`, or the run's own offline store served for the command."""
    from .publishing import offline_store

    endpoint = endpoint or os.environ.get("HF_ENDPOINT")
    store = offline_store(output_dir) if output_dir else None
    if endpoint or store is None or not store.is_dir():
        yield endpoint
        return
    from .hub.server import running_server, serve

    with _without_xet():
        url = running_server(store)
        if url:
            yield url
            return
        server, url = serve(store)
        try:
            yield url
        finally:
            server.shutdown()
            server.server_close()


@contextlib.contextmanager
def _without_xet() -> Iterator[None]:
    """The offline Hub speaks plain LFS: with `hf_xet` installed and `HF_HUB_DISABLE_XET` unset, `--publish` would
    ask it for a Xet write token for the plots and fail."""
    from huggingface_hub import constants

    before = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = before


@contextlib.contextmanager
def open_run(run: str, endpoint: str | None = None) -> Iterator[RunResults]:
    """The results of `run`: an output_dir with `published.json`, or an adapter repo id `[@revision]`."""
    from huggingface_hub import HfApi

    folder = Path(run)
    if folder.is_dir():
        published = folder / "published.json"
        if not published.is_file():
            raise ReportError(f"{published} does not exist: is {folder} a run's output_dir?")
        adapters = sorted(
            (entry for entry in json.loads(published.read_text()) if entry.get("kind") == "adapter"),
            key=lambda entry: entry["iteration"],
        )
        if not adapters:
            raise ReportError(f"{published} lists no adapter: the run has not trained a model yet")
        repo_ids = sorted({entry["repo_id"] for entry in adapters if entry.get("repo_id")})
        if not repo_ids:
            yield load_folder_run([Path(entry["location"]) for entry in adapters], folder.name)
            return
        with _endpoint_for(folder, endpoint) as url:
            yield load_hub_run(HfApi(endpoint=url), repo_ids[0])
        return
    repo_id, _, revision = run.partition("@")
    if not _REPO_ID.match(repo_id):
        raise ReportError(f"{run!r} is neither a run's output_dir nor a repo id <namespace>/<run>-adapter")
    with _endpoint_for(None, endpoint) as url:
        yield load_hub_run(HfApi(endpoint=url), repo_id, revision or "main")


# Output ------------------------------------------------------------------------------------------------------------
def training_columns(results: RunResults) -> dict[str, dict[str, str]]:
    """`trained` (method and starting model) and `pairs` of each model, from its card's lineage block."""
    trained, pairs = {"M0": "base model"}, {}
    for label, block in results.lineage.items():
        method = METHODS.get(block.get("method"), block.get("method") or "?")
        start = str(block.get("trained_from") or "").split(" ")[0]
        trained[label] = f"{method} from {start}" if start else method
        count = (block.get("counts") or {}).get("pairs")
        if count is not None:
            pairs[label] = str(count)
    return {"trained": trained, "pairs": pairs}


def summary(results: RunResults) -> tuple[list[str], list[list[str]]]:
    """SPEC Table 2's shape: a row per model (M0, M1, ..., baselines), the training columns, then the benchmarks."""
    from .cards.tables import headline_table

    return headline_table(results.reports, training_columns(results))


def rich_tables(results: RunResults) -> list:
    """The benchmark table, the paired comparisons against M0 when the results carry per-item outcomes, and the
    plumbing-check warning when the benchmarks rest on too few items."""
    from rich.table import Table
    from rich.text import Text

    from .cards.tables import judges_of, paired_table, plumbing_check

    headers, rows = summary(results)
    judges = judges_of(results.reports)
    warning = plumbing_check(results.reports)
    title = f"Evaluation of {results.name}" + (" (plumbing check)" if warning else "")
    caption = "value [95% interval]" + (f"; judged by {', '.join(judges)}" if judges else "")
    tables = [_rich(Table(title=title, caption=caption), headers, rows)]
    paired = paired_table(results.reports)
    if paired is not None:
        tables.append(_rich(Table(title="Paired against M0, same items", caption=PAIRED_METHODS), *paired))
    if warning:
        tables.append(Text(warning, style="bold"))
    return tables


def _rich(table, headers: list[str], rows: list[list[str]]):
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def report_markdown(results: RunResults, plots: list[str]) -> str:
    from .cards.tables import judges_of, markdown_table, metrics_table, paired_table, plumbing_check

    judges = judges_of(results.reports)
    warning = plumbing_check(results.reports)
    lines = [f"# Evaluation of {results.name}", ""]
    if warning:
        lines += [f"**{warning}**", ""]
    lines += [
        f"Read from {results.source}. Each cell: value [95% interval] where the evaluator computed one.",
        "",
        markdown_table(*summary(results)),
        "",
    ]
    paired = paired_table(results.reports)
    if paired is not None:
        lines += ["## Paired against M0, same items", "", PAIRED_METHODS + ".", "", markdown_table(*paired), ""]
    if judges:
        lines += [f"Judge-dependent numbers were rated by {', '.join(f'`{j}`' for j in judges)}.", ""]
    lines += [f"![{Path(plot).stem}]({plot})\n" for plot in plots]
    lines += ["## Every metric", "", markdown_table(*metrics_table(results.reports)), ""]
    return "\n".join(lines)


def write_report(results: RunResults, output: Path) -> list[Path]:
    """`report.md`, `results.png` and one `<task>.png` per benchmark in `output`; returns the paths written."""
    from .cards.plots import plot_headline, plot_task
    from .cards.tables import tasks_of

    output.mkdir(parents=True, exist_ok=True)
    plots = {"results.png": plot_headline(results.reports)}
    plots.update({f"{task}.png": plot_task(results.reports, task) for task in tasks_of(results.reports)})
    for name, content in plots.items():
        (output / name).write_bytes(content)
    (output / "report.md").write_text(report_markdown(results, list(plots)))
    return [output / "report.md", *(output / name for name in plots)]


def with_baselines(results: RunResults, baselines: dict[str, RunResults]) -> RunResults:
    """`results` plus the trained models of other runs as baseline rows: model `M<t>` (t >= 1) of the run given under
    `name` becomes `M<t>-<name>` (e.g. `M1-reward-only`). Their M0 and their own baselines are left out: M0 is the
    same base model, and the paired comparisons use this run's M0."""
    from .cards.tables import order_labels

    reports, lineage = dict(results.reports), dict(results.lineage)
    for name, other in baselines.items():
        trained = [label for label in other.reports if _TRAINED.match(label)]
        reports.update({f"{label}-{name}": other.reports[label] for label in trained})
        lineage.update({f"{label}-{name}": other.lineage[label] for label in trained if label in other.lineage})
    ordered = {label: reports[label] for label in order_labels(reports)}
    source = "; ".join([results.source, *(f"{name}: {other.source}" for name, other in baselines.items())])
    return RunResults(results.name, source, ordered, lineage, results.publish)


def _baseline_specs(specs: list[str]) -> dict[str, str]:
    """`NAME=RUN` arguments by name; NAME as a model label suffix (letters, digits, `.`, `_`, `-`)."""
    parsed = {}
    for spec in specs:
        name, _, run = spec.partition("=")
        if not run or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ReportError(f"--baseline {spec!r}: expected NAME=RUN, e.g. reward-only=runs/smollm2-135m-gsm8k-ro")
        parsed[name] = run
    return parsed


def _default_output(run: str, results: RunResults) -> Path:
    return Path(run) / "report" if Path(run).is_dir() else Path(f"report-{results.name.split('/')[-1]}")


def _report(args: argparse.Namespace, rest: list[str]) -> int:
    from huggingface_hub.errors import HfHubHTTPError
    from rich.console import Console

    try:
        with contextlib.ExitStack() as stack:
            results = stack.enter_context(open_run(args.run, args.endpoint))
            if not results.reports:
                raise ReportError(f"no evaluation results found in {results.source}")
            others = {
                name: stack.enter_context(open_run(run, args.endpoint))
                for name, run in _baseline_specs(args.baseline).items()
            }
            output = Path(args.output) if args.output else _default_output(args.run, results)
            results = with_baselines(results, others)
            written = write_report(results, output)
            if args.publish:
                added = {label: report for label, report in results.reports.items() if not _OWN.match(label)}
                costed = {label: r for label, r in results.reports.items() if _OWN.match(label) and r.cost}
                results.publish({**costed, **added})
                print(f"published the results of {', '.join(added) or 'no baseline'} on the latest adapter card")
    except (ReportError, HfHubHTTPError, OSError, ValueError) as err:
        print(f"rlrf-hub report: error: {err}", file=sys.stderr)
        return 2
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    for table in rich_tables(results):
        console.print(table)
    for path in written:
        print(path)
    return 0


def add_parser(commands) -> None:
    """Add `report` to the `rlrf-hub` subcommands (`commands` is `make_parser`'s subparsers action)."""
    report = commands.add_parser(
        "report",
        help="print a run's benchmark table (M0, M1, M2, baselines) from its adapter cards; write Markdown and PNG",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("run", help="a run's output_dir, or an adapter repo id <namespace>/<run>-adapter[@revision]")
    report.add_argument("--output", help="folder for report.md and the PNGs (default: <output_dir>/report)")
    report.add_argument("--endpoint", help="the Hub's URL (default: $HF_ENDPOINT, or the run's own offline store)")
    report.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=RUN",
        help="add the trained models of another run (output_dir or adapter repo) as rows M<t>-NAME, compared with "
        "this run's M0; repeatable (e.g. --baseline reward-only=runs/smollm2-135m-cpu-gsm8k-reward-only)",
    )
    report.add_argument(
        "--publish",
        action="store_true",
        help="also put the baselines' results on the card of this run's latest adapter (its table then shows them)",
    )
    report.set_defaults(handler=_report)
