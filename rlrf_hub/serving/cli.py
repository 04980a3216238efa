"""`rlrf-hub serve`: a TGI-compatible server for a transformers model, on machines without Docker or a GPU."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .protocol import DEFAULT_PAYLOAD_LIMIT

SERVE_HELP = """Serve a transformers causal LM with text-generation-inference's HTTP API: /generate, /generate_stream,
/v1/chat/completions (streaming too), /info, /health, /metrics, /v1/models. Concurrent requests are batched,
JSON-schema and regex grammars constrain decoding, and LoRA adapters are chosen per request with `adapter_id`:
those named with --adapter, or Hub adapters (owner/name[@rev]) fetched from HF_ENDPOINT on first use; a request
cannot load a local folder. Malformed requests get 400, bodies over --payload-limit 413.
The URL is printed on one line once the server accepts requests."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="embedded:tiny, embedded:smollm2-135m-instruct, a local folder or a Hub repo id"
    )
    parser.add_argument("--revision", default=None, help="revision of the model on the Hub (branch, tag or sha)")
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="REPO[@REV]|FOLDER",
        help="preload a LoRA adapter (a Hub repo or a local folder); repeatable. Requests select it with "
        "adapter_id=REPO[@REV] or the folder as given here (chat: model=...). These are the only local folders "
        "the server loads adapters from; other Hub adapters load on first use.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: 0, a free one; the URL is printed)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="rows decoded together (default: 16)")
    parser.add_argument("--max-input-tokens", type=int, default=None, help="longest prompt (default: total - 1)")
    parser.add_argument(
        "--max-total-tokens",
        type=int,
        default=None,
        help="prompt + generated tokens per request (default: the model's positions, at most 4096)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=128, help="requests that may wait for a batch; more get 429 (default: 128)"
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="how long a new batch waits for more requests to start with (default: 5)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads for generation (default: torch's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument(
        "--weight-precision",
        choices=("float16", "float32"),
        default=None,
        help="on the CPU: float16 keeps half-precision copies of the linear weights and computes in fp32 (about "
        "twice the speed of float32 where fbgemm exists); default: float16 on CPUs with fbgemm, else float32",
    )
    parser.add_argument(
        "--payload-limit",
        type=int,
        default=DEFAULT_PAYLOAD_LIMIT,
        help=f"largest request body in bytes; larger ones get 413 (default: {DEFAULT_PAYLOAD_LIMIT})",
    )


def config_from_args(args: argparse.Namespace):
    from .service import ServeConfig

    return ServeConfig(
        model=args.model,
        revision=args.revision,
        adapters=tuple(args.adapter),
        max_batch_size=args.max_batch_size,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        max_queue=args.max_queue,
        batch_window_ms=args.batch_window_ms,
        threads=args.threads,
        device=args.device,
        payload_limit=args.payload_limit,
        weight_precision=args.weight_precision,
    )


def serve(args: argparse.Namespace, rest: list[str] | None = None) -> int:
    from .server import ServeHTTPServer
    from .service import TextGenerationService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        service = TextGenerationService(config)
    except (ValueError, OSError) as err:
        print(f"rlrf-hub serve: error: {err}", file=sys.stderr)
        return 2
    try:
        httpd = ServeHTTPServer((args.host, args.port), service)
    except OSError as err:
        service.close()
        print(f"rlrf-hub serve: error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"rlrf-hub serve: {config.model} ready at {httpd.url}", flush=True)
    try:
        httpd.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        httpd.server_close()
        service.close()
    return 0


def add_parser(commands) -> argparse.ArgumentParser:
    """Add `serve` to the `rlrf-hub` subcommands."""
    parser = commands.add_parser(
        "serve", help="serve a model with TGI's HTTP API (see `rlrf-hub serve --help`)", description=SERVE_HELP
    )
    add_arguments(parser)
    parser.set_defaults(handler=serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlrf_hub.serving", description=SERVE_HELP)
    add_arguments(parser)
    return serve(parser.parse_args(argv))
