"""Command line: `python -m autolora_worker inspect|embed|serve|bench …`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import quote


def _quiet_libraries() -> None:
    # Loading bars and cast warnings from transformers/diffusers would interleave with our JSON output.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _inspect(args) -> int:
    from .lora.cli import inspect_command

    return inspect_command(args.file, args.json)


def _embed(args) -> int:
    from .encoder.cli import embed_command

    return embed_command(args.file, args.json, args.encoder)


def _tiny_flux(args) -> int:
    from .tiny_flux import tiny_flux_command

    return tiny_flux_command(args.out, args.seed, args.full_size)


def _tiny_flux_loras(args) -> int:
    from .synthetic_flux_loras import tiny_flux_loras_command

    return tiny_flux_loras_command(args.out, args.concepts, args.per_concept, args.rank, args.seed)


def _full_size_flux_loras(args) -> int:
    from .synthetic_flux_loras import full_size_flux_loras_command

    return full_size_flux_loras_command(args.out, args.count, args.seed)


def _export_text_encoder(args) -> int:
    from .world.onnx_export import export_text_encoder_command

    return export_text_encoder_command(args.out, use_cache=not args.no_cache)


def serve_paths(family: str, model_path: str | None, gates: str | None,
                bundle_dir: Path | None = None) -> tuple[str | None, str | None, str | None]:
    """The model and gates `serve` loads: what was asked for, else, for the proving ground, the embedded bundle's
    model and trained gates when a bundle is there. The third value is a note for stderr when defaults were used."""
    if family != "proving-ground" or model_path is not None:
        return model_path, gates, None
    from .world.bundle import BundlePaths, default_bundle_dir

    paths = BundlePaths(bundle_dir or default_bundle_dir())
    if not paths.manifest.exists():
        return None, gates, (f"no proving-ground bundle at {paths.root}: serving a seeded random model "
                             "(build the bundle with `make world`, or pass --model-path)")
    gates = gates if gates is not None else (str(paths.gates) if paths.gates.exists() else None)
    return str(paths.model), gates, f"serving the proving-ground bundle at {paths.root}"


def serve_encoder(family: str, model_path: str | None, encoder: str | None,
                  bundle_dir: Path | None = None) -> str | None:
    """The LoRA encoder `serve` uses for /embed: the one asked for, else the proving-ground bundle's when serving
    the bundle's model; None (no /embed) otherwise."""
    return _bundle_folder("encoder", family, model_path, encoder, bundle_dir)


def serve_evaluator(family: str, model_path: str | None, evaluator: str | None,
                    bundle_dir: Path | None = None) -> str | None:
    """The image evaluator `serve` uses for /judge: the one asked for, else the proving-ground bundle's when serving
    the bundle's model; None (no /judge) otherwise."""
    return _bundle_folder("evaluator", family, model_path, evaluator, bundle_dir)


def _bundle_folder(part: str, family: str, model_path: str | None, asked: str | None,
                   bundle_dir: Path | None) -> str | None:
    if asked is not None or family != "proving-ground" or model_path is not None:
        return asked
    from .world.bundle import BundlePaths, default_bundle_dir

    paths = BundlePaths(bundle_dir or default_bundle_dir())
    folder = getattr(paths, part)
    return str(folder) if paths.manifest.exists() and folder.is_dir() else None


def _serve(args) -> int:
    import torch

    from .engine import Engine
    from .errors import WorkerError
    from .models import load_backbone

    token = args.token or os.environ.get("AUTOLORA_WORKER_TOKEN", "")
    # Over HTTP the token is what lets a host in; on the queue, Redis's password is, and the token only fetches LoRAs.
    if not token and (not args.queue or args.pool_url):
        print("error: no token: pass --token or set AUTOLORA_WORKER_TOKEN (the worker never runs open; on a queue, "
              "--pool-url needs it)", file=sys.stderr)
        return 2
    queue = queue_url(args.queue, os.environ.get("AUTOLORA_REDIS_PASSWORD", "")) if args.queue else None
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.evaluator is not None and args.family != "proving-ground":
        print(f"error: --evaluator judges proving-ground images; this worker runs {args.family}", file=sys.stderr)
        return 2
    fetcher = None
    if args.pool_url:
        from .lora_fetch import LoraFetcher

        bad = [url for url in args.pool_url if not url.startswith(("http://", "https://"))]
        if bad:
            print(f"error: --pool-url takes the host's http(s) base URL, e.g. http://host:8788, got {bad[0]}",
                  file=sys.stderr)
            return 2
        fetcher = LoraFetcher(args.pool_url, token, args.lora_cache, args.lora_cache_mb << 20)
    model_path, gates, note = serve_paths(args.family, args.model_path, args.gates)
    if note:
        print(note, file=sys.stderr)
    try:
        backbone = load_backbone(args.family, model_path, args.device)
        engine = Engine(backbone, gates, cache_bytes=int(args.cache_mb) << 20,
                        encoder_path=serve_encoder(args.family, args.model_path, args.encoder),
                        evaluator_path=serve_evaluator(args.family, args.model_path, args.evaluator),
                        max_lora_bytes=args.max_lora_mb << 20,
                        compile_gates=args.compile_gates == "on" or (args.compile_gates == "auto" and
                                                                     backbone.device.type == "cuda"),
                        fetcher=fetcher)
    except (WorkerError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if queue:
        from .queue_worker import serve_queue

        return serve_queue(engine, queue, args.queue_prefix)
    from .service import serve

    serve(engine, args.host, args.port, token, args.request_timeout_s)
    return 0


def queue_url(url: str, password: str) -> str:
    """--queue's URL with AUTOLORA_REDIS_PASSWORD put in when the URL has none (argv is visible to other users)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise SystemExit(f"error: --queue takes a redis:// or rediss:// URL, got {url!r}")
    if not password or "@" in rest:
        return url
    return f"{scheme}://:{quote(password, safe='')}@{rest}"


def _bench(args) -> int:
    from .bench import run_fusion_bench

    return run_fusion_bench(args)


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _gates(args) -> int:
    import json

    from .world.bundle import default_bundle_dir
    from .world.retrain import evaluate_gates, train_candidate

    bundle = args.bundle or default_bundle_dir()
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    if args.gates_command == "train":
        result = train_candidate(bundle, args.out, steps=args.steps, seed=args.seed, init=args.init, device=args.device,
                                 examples=args.examples, progress=say)
    else:
        result = evaluate_gates(bundle, args.gates, pairs=args.pairs, steps=args.steps, device=args.device, progress=say)
    print(json.dumps(result) if args.json else "\n".join(f"{key}: {value}" for key, value in result.items()), flush=True)
    return 0


def _gates_import(args) -> int:
    import json

    from .fusion.diffsynth import import_diffsynth_gates

    try:
        result = import_diffsynth_gates(args.file, args.out, version=args.version)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


def _encoder(args) -> int:
    import json

    from .world.bundle import default_bundle_dir
    from .world.retrain import evaluate_encoder, train_encoder_candidate

    bundle = args.bundle or default_bundle_dir()
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    if args.encoder_command == "train":
        result = train_encoder_candidate(bundle, args.out, steps=args.steps, seed=args.seed, init=args.init,
                                         extra=args.extra, device=args.device, progress=say)
    else:
        result = evaluate_encoder(bundle, args.encoder, device=args.device)
    print(json.dumps(result) if args.json else "\n".join(f"{key}: {value}" for key, value in result.items()), flush=True)
    return 0


def _encoder_bootstrap(args) -> int:
    import json

    from .encoder.bootstrap import bootstrap_encoder

    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    try:
        result = bootstrap_encoder(args.examples, args.out, family=args.family, steps=args.steps, seed=args.seed,
                                   batch=args.batch, width=args.width, probes=args.probes, depth=args.depth,
                                   heldout_every=args.heldout_every, device=args.device, progress=say)
    except ValueError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else "\n".join(f"{key}: {value}" for key, value in result.items()),
          flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autolora_worker",
                                     description="AutoLoRA GPU worker: LoRA files, fusion, sampling.")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="read a LoRA file and describe it")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(run=_inspect)

    embed = commands.add_parser("embed", help="embed a LoRA file with the LoRA encoder (for retrieval)")
    embed.add_argument("file")
    embed.add_argument("--json", action="store_true", help="print one JSON object")
    embed.add_argument("--encoder", default=None, help="encoder folder (default: the embedded bundle's encoder/)")
    embed.set_defaults(run=_embed)

    tiny = commands.add_parser("tiny-flux", help="write a tiny random FLUX stand-in (diffusers folder, family flux)")
    tiny.add_argument("--out", required=True, help="a new folder")
    tiny.add_argument("--seed", type=int, default=0, help="seeds the random weights")
    tiny.add_argument("--full-size", action="store_true",
                      help="FLUX.1's full transformer config, no weights: a worker builds it with seeded random "
                           "weights on its device (GPU checks; 24 GB in bf16)")
    tiny.set_defaults(run=_tiny_flux)

    tiny_loras = commands.add_parser("tiny-flux-loras", help="write FLUX.1-shaped LoRA files of a few visual concepts, "
                                                             "with captions (test data for `encoder bootstrap`)")
    tiny_loras.add_argument("--out", required=True, help="a new folder (LoRA files, manifest.json, examples.json)")
    tiny_loras.add_argument("--concepts", type=_positive(int), default=8, help="how many concepts (at most 12)")
    tiny_loras.add_argument("--per-concept", type=_positive(int), default=5, help="LoRA files per concept")
    tiny_loras.add_argument("--rank", type=_positive(int), default=2)
    tiny_loras.add_argument("--seed", type=int, default=0)
    tiny_loras.set_defaults(run=_tiny_flux_loras)

    full_loras = commands.add_parser("full-size-flux-loras", help="write LoRA files at FLUX.1's real size (52-209 MB "
                                                                  "each, random factors; the ingest benchmark's data)")
    full_loras.add_argument("--out", required=True, help="a new folder (LoRA files, manifest.json)")
    full_loras.add_argument("--count", type=_positive(int), default=5)
    full_loras.add_argument("--seed", type=int, default=0)
    full_loras.set_defaults(run=_full_size_flux_loras)

    export = commands.add_parser("export-text-encoder", help="write the text encoder as ONNX + tokenizer for the host")
    export.add_argument("--out", default="build/text-encoder", help="output folder")
    export.add_argument("--no-cache", action="store_true",
                        help="export even if an intact export for the same sources is cached (see AUTOLORA_CACHE_DIR)")
    export.set_defaults(run=_export_text_encoder)

    serve = commands.add_parser("serve", help="serve generation over HTTP (bearer token required)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    serve.add_argument("--port", type=int, default=0, help="port; 0 picks a free one and prints it")
    serve.add_argument("--token", default=None,
                       help="bearer token; prefer AUTOLORA_WORKER_TOKEN (argv is visible to other users)")
    serve.add_argument("--family", default="proving-ground", help="model family: flux | proving-ground")
    serve.add_argument("--model-path", default=None,
                       help="model directory (required for flux; proving-ground default: the bundle's model)")
    serve.add_argument("--gates", default=None,
                       help="gate weights (.safetensors); default: the bundle's for the proving ground, else untrained")
    serve.add_argument("--device", default="cuda" if _cuda() else "cpu")
    serve.add_argument("--encoder", default=None,
                       help="LoRA encoder folder for /embed (default: the bundle's, when serving the bundle's model)")
    serve.add_argument("--evaluator", default=None,
                       help="image evaluator folder for /judge, proving ground only (default: the bundle's evaluator/ "
                            "when serving the bundle's model)")
    serve.add_argument("--cache-mb", type=int, default=2048, help="LoRA cache size on the device")
    serve.add_argument("--queue", default=None, metavar="REDIS_URL",
                       help="pull jobs from the hosts' queue on Redis (queue.backend: redis) instead of serving HTTP, "
                            "e.g. redis://host:6379 or rediss:// for TLS; the password comes from "
                            "AUTOLORA_REDIS_PASSWORD. Give --pool-url too unless the pool's paths are on a shared disk")
    serve.add_argument("--queue-prefix", default="autolora", help="the queue's Redis key prefix (queue.redis_prefix)")
    serve.add_argument("--pool-url", action="append", default=[],
                       help="a host's LoRA pool (its workers.pool_server), e.g. http://host:8788: LoRAs that jobs name "
                            "by sha256 are fetched from it with the worker token; repeat for several hosts (tried in "
                            "order). Without it, LoRAs are read from the paths jobs give (a shared disk)")
    serve.add_argument("--lora-cache", default=str(Path.home() / ".cache" / "autolora" / "loras"),
                       help="folder for LoRA files fetched from --pool-url (default ~/.cache/autolora/loras)")
    serve.add_argument("--lora-cache-mb", type=_positive(int), default=20480,
                       help="the most the fetched LoRA files take on disk; least recently used go first (default "
                            "20480)")
    serve.add_argument("--compile-gates", choices=["auto", "on", "off"], default="auto",
                       help="run the gates as one compiled pass (torch.compile; eager if compiling fails): auto = on "
                            "CUDA only, where the first gated job compiles once per process")
    serve.add_argument("--max-lora-mb", type=_positive(int), default=2048,
                       help="largest LoRA file read (/inspect, /embed, /generate); default 2048, the host's own limit")
    # A host sends each request at once: 30 s is generous even for a remote worker on a slow link.
    serve.add_argument("--request-timeout-s", type=_positive(float), default=30.0,
                       help="drop a client that takes longer than this to send each part of a request (default 30)")
    _add_lifeline(serve)
    serve.set_defaults(run=_serve)

    demo = commands.add_parser("demo", help="generate a 2x2 grid with and without a LoRA on the embedded default")
    demo.add_argument("--prompt", default="a red hexagon with diagonal stripes")
    demo.add_argument("--out", default="build/demo", help="folder for the PNG grids")
    demo.add_argument("--bundle", default=None, help="proving-ground bundle (default: the embedded bundle/ folder)")
    demo.add_argument("--top", type=int, default=2, help="how many retrieved LoRAs to fuse")
    demo.add_argument("--model-path", default=None,
                      help="a proving-ground model directory instead of the bundle (LoRA: a random one)")
    demo.add_argument("--gates", default=None)
    demo.add_argument("--device", default="cuda" if _cuda() else "cpu")
    demo.set_defaults(run=_demo)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="bench", required=True)
    fusion = bench_kinds.add_parser("fusion", help="per-step latency of every fusion strategy vs none")
    fusion.add_argument("--json", action="store_true")
    fusion.add_argument("--device", default="cpu")
    fusion.add_argument("--full-flux", action="store_true",
                        help="also time the full-size FLUX transformer (random init, bf16, 1024², GPU)")
    fusion.add_argument("--tokens", type=int, default=4096, help="image tokens for the FLUX-size linears")
    fusion.add_argument("--rank", type=int, default=16)
    fusion.add_argument("--repeats", type=int, default=3, help="timed repetitions per row (median reported)")
    fusion.set_defaults(run=_bench)

    gates = commands.add_parser("gates", help="retrain the fusion gates, measure gates on held-out LoRAs, import "
                                              "published gates")
    gate_commands = gates.add_subparsers(dest="gates_command", required=True)
    train = gate_commands.add_parser("train", help="train a candidate gate file on the bundle's training LoRAs")
    train.add_argument("--out", required=True, help="where to write the candidate (.safetensors)")
    train.add_argument("--steps", type=int, default=300, help="training steps (0: save the starting gates as they are)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--init", default=None, help="start from these gates (a fine-tune) instead of fresh ones")
    train.add_argument("--examples", default=None,
                       help="JSON of highly rated generations ({examples: [{prompt, images, loras}]}) to train on too")
    evaluate = gate_commands.add_parser("eval", help="held-out loss and accuracy of a gate file")
    evaluate.add_argument("--gates", required=True)
    evaluate.add_argument("--pairs", type=int, default=6, help="held-out object + style pairs to draw")
    evaluate.add_argument("--steps", type=int, default=8, help="sampling steps per image")
    for command in (train, evaluate):
        command.add_argument("--bundle", default=None, help="proving-ground bundle (default: the embedded bundle/)")
        command.add_argument("--device", default="cuda" if _cuda() else "cpu")
        command.add_argument("--json", action="store_true", help="print one JSON object (progress on stderr)")
        _add_lifeline(command)
        command.set_defaults(run=_gates)
    imported = gate_commands.add_parser("import", help="convert published gates into our gate file (one JSON line)")
    imported.add_argument("file", help="the published gate file (.safetensors)")
    imported.add_argument("--from", dest="source_format", required=True, choices=["diffsynth"],
                          help="its layout: diffsynth = DiffSynth-Studio's FluxLoraPatcher (the AutoLoRA authors' "
                               "FLUX.1-dev gates)")
    imported.add_argument("--out", required=True, help="where to write our gate file (.safetensors)")
    imported.add_argument("--version", default=None,
                          help="gate version to record (default: diffsynth- and the first 12 hex of the file's sha256)")
    imported.set_defaults(run=_gates_import)

    encoder = commands.add_parser("encoder", help="retrain the LoRA encoder, and measure retrieval on held-out LoRAs")
    encoder_commands = encoder.add_subparsers(dest="encoder_command", required=True)
    encoder_train = encoder_commands.add_parser("train", help="train a candidate encoder (a folder)")
    encoder_train.add_argument("--out", required=True, help="folder to write encoder.json + encoder.safetensors to")
    encoder_train.add_argument("--steps", type=int, default=300)
    encoder_train.add_argument("--seed", type=int, default=0)
    encoder_train.add_argument("--init", default=None, help="fine-tune this encoder folder instead of a fresh one")
    encoder_train.add_argument("--extra", default=None,
                               help="JSON of crawled LoRAs with captions ({examples: [{lora, captions}]}) to train on too")
    encoder_eval = encoder_commands.add_parser("eval", help="recall@1/@3 and MRR of held-out LoRAs")
    encoder_eval.add_argument("--encoder", required=True, help="encoder folder")
    for command in (encoder_train, encoder_eval):
        command.add_argument("--bundle", default=None, help="proving-ground bundle (default: the embedded bundle/)")
        command.add_argument("--device", default="cuda" if _cuda() else "cpu")
        command.add_argument("--json", action="store_true", help="print one JSON object (progress on stderr)")
        _add_lifeline(command)
        command.set_defaults(run=_encoder)
    bootstrap = encoder_commands.add_parser(
        "bootstrap", help="train a family's first encoder from crawled, captioned LoRAs; judge it against text-only "
                          "retrieval on held-out ones (one JSON line with --json: promote or not, and why)")
    bootstrap.add_argument("--family", required=True, choices=["flux"])
    bootstrap.add_argument("--examples", required=True,
                           help="JSON of the pool's LoRAs ({examples: [{lora, captions: [...], text: [...]}]}): "
                                "captions train and query the encoder, text is what text-only retrieval knows")
    bootstrap.add_argument("--out", required=True, help="folder to write the encoder to (promoted or not)")
    bootstrap.add_argument("--steps", type=_positive(int), default=300)
    bootstrap.add_argument("--seed", type=int, default=0)
    bootstrap.add_argument("--batch", type=_positive(int), default=16,
                           help="LoRAs per step (capped at the number of training LoRAs)")
    bootstrap.add_argument("--width", type=_positive(int), default=128, help="encoder width")
    bootstrap.add_argument("--probes", type=_positive(int), default=4, help="probe rows per layer")
    bootstrap.add_argument("--depth", type=_positive(int), default=2, help="transformer layers")
    bootstrap.add_argument("--heldout-every", type=_positive(int), default=5,
                           help="hold out every N-th LoRA (by sha256) to judge the encoder on (default 5)")
    bootstrap.add_argument("--bundle", default=None, help="ignored (the host passes it to every trainer)")
    bootstrap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    bootstrap.add_argument("--json", action="store_true", help="print one JSON object (progress on stderr)")
    _add_lifeline(bootstrap)
    bootstrap.set_defaults(run=_encoder_bootstrap)

    from .world.cli import add_world_commands

    add_world_commands(commands, bench_kinds)
    return parser


def _positive(number_type: type):
    """An argparse type: a number of `number_type` above zero."""

    def parse(text: str):
        value = number_type(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    parse.__name__ = number_type.__name__  # argparse names the type when the text is not a number at all
    return parse


def _add_lifeline(command: argparse.ArgumentParser) -> None:
    command.add_argument("--exit-with-stdin", action="store_true",
                         help="exit when stdin reaches end-of-file: for a process a host starts with stdin a pipe it "
                              "holds, so it ends when the host does (never under nohup or by hand)")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "exit_with_stdin", False):
        # First, before the minutes a model load or a training run can take: a dead host's work is wasted.
        from .lifeline import exit_when_stdin_closes

        exit_when_stdin_closes(f"autolora_worker {args.command}")
    _quiet_libraries()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
