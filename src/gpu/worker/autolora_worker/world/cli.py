"""Command-line entry points of the proving ground: `world build` and `bench world`."""

from __future__ import annotations

import json
import sys


def build_command(args) -> int:
    from .build import build_world
    from .gates import WorldGateError

    try:
        redo = tuple(stage for stage in (args.redo or "").split(",") if stage)
        out = build_world(args.preset, out=args.out, work=args.work, device=args.device, resume=args.resume,
                          below_gates=args.below_gates, redo=redo)
    except (ValueError, FileNotFoundError, WorldGateError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"bundle": str(out)}))
    return 0


def bench_command(args) -> int:
    from .benchmark import run_world_bench

    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    try:
        report = run_world_bench(args.bundle, fast=args.fast, out_dir=args.out, device=args.device, progress=progress,
                                 gallery=args.gallery)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        from .benchmark import markdown

        print(markdown(report))
    return 0


def gate_study_command(args) -> int:
    from .gate_study import VARIANTS, markdown, run_gate_study, write_report

    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    try:
        report = run_gate_study(args.bundle, variants=variants, pairs=args.pairs,
                                steps=args.steps, sample_steps=args.sample_steps, device=args.device, progress=progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out:
        write_report(report, args.out)
    print(json.dumps(report) if args.json else markdown(report))
    return 0


def prompts_command(args) -> int:
    from .benchmark import retrieval_prompts
    from .bundle import BundlePaths, default_bundle_dir

    paths = BundlePaths(args.bundle or default_bundle_dir())
    if not paths.pool_index.exists():
        print(f"error: {paths.pool_index} not found: not a proving-ground bundle", file=sys.stderr)
        return 2
    records = json.loads(paths.pool_index.read_text())["loras"]
    try:
        print(json.dumps(retrieval_prompts(records, args.split, args.seed, args.per_concept)))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def add_world_commands(commands, bench_kinds) -> None:
    world = commands.add_parser("world", help="the proving ground: build its bundle")
    world_kinds = world.add_subparsers(dest="world", required=True)
    build = world_kinds.add_parser("build", help="build the proving-ground bundle from scratch (make world)")
    build.add_argument("--preset", default="full", help="full (the committed bundle) or ci (a reduced build)")
    build.add_argument("--out", default=None, help="bundle folder (default: the embedded bundle/ folder)")
    build.add_argument("--work", default="build/world", help="work folder with checkpoints and stage markers")
    build.add_argument("--resume", action="store_true", help="continue an interrupted build from its work folder")
    build.add_argument("--device", default="cpu")
    build.add_argument("--redo", default=None, metavar="STAGES",
                       help="rebuild only these comma-separated stages of the existing bundle (e.g. encoder)")
    build.add_argument("--below-gates", action="store_true",
                       help="publish the bundle even if it misses build gates (each is recorded in its manifest and README)")
    build.set_defaults(run=build_command)
    prompts = world_kinds.add_parser("prompts", help="retrieval prompts for the host's retrieval bench (JSON)")
    prompts.add_argument("--split", choices=("train", "heldout"), required=True,
                         help="whose LoRAs are the candidates: train (validation) or heldout (test)")
    prompts.add_argument("--seed", type=int, required=True, help="draws the templates and paraphrases")
    prompts.add_argument("--per-concept", type=int, default=4, help="single-concept prompts per concept")
    prompts.add_argument("--bundle", default=None, help="bundle folder (default: the embedded bundle/ folder)")
    prompts.set_defaults(run=prompts_command)

    bench = bench_kinds.add_parser("world", help="the paper's tables on the proving-ground bundle")
    bench.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    bench.add_argument("--fast", action="store_true", help="a reduced version of the same measurements")
    bench.add_argument("--bundle", default=None, help="bundle folder (default: the embedded bundle/ folder)")
    bench.add_argument("--out", default="reports/world", help="folder for bench-world.json/.md and the heatmap")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--gallery", default=None,
                       help="also draw the gallery PNG here: held-out prompts × base, each LoRA, direct, gated")
    bench.set_defaults(run=bench_command)

    study = bench_kinds.add_parser("gate-study", help="gate variants (eq. 10 pairs, hinge, init) side by side on held-out pairs")
    study.add_argument("--bundle", default=None, help="bundle folder (default: the embedded bundle/ folder)")
    study.add_argument("--variants", default=None, help="comma-separated subset of the variants (default: all)")
    study.add_argument("--pairs", type=int, default=24, help="held-out object + style pairs, 4 seeds each")
    study.add_argument("--steps", type=int, default=300, help="gate training steps per variant")
    study.add_argument("--sample-steps", type=int, default=20, help="sampling steps per image")
    study.add_argument("--out", default="reports/world", help="folder for gate-study.json/.md ('' to skip)")
    study.add_argument("--device", default="cpu")
    study.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    study.set_defaults(run=gate_study_command)
