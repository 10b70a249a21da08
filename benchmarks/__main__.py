"""The benchmark suite: `python -m benchmarks [--quick] [--skip-elf] [--only NAME ...] [--model PATH] [--markdown PATH]`.

Runs, in one process tree and one sitting so that contenders share the machine's state:
- end_to_end: boundary map → segmentation, MVox/s, memory and ARAND, emflow vs elf's in-memory
  `simple_multicut_workflow` (62.5 MVox; `--quick`: 7.8 MVox, one repeat), and each of emflow's
  block-wise stages against a stage that only reads and writes what it does;
- scaling: emflow's MVox/s and peak RSS from 62.5 MVox to 1 GVox, elf's up to the size its memory
  allows and where it would run out of this machine's (about 24 minutes; `--quick`: 7.8 and 15.6
  MVox), with a figure beside the page;
- memory: peak RSS per stage at two volume sizes 8x apart, same block shape;
- orchestration: overhead per block-stage at 5,000 and 20,000 blocks, local scheduler and luigid,
  plain Luigi beside it, and a no-op rerun (`--quick`: 500 and 2,000 blocks);
- hierarchical_multicut: hierarchical vs global multicut energy and time, with elf's blockwise_multicut.
Eight more run only when named with --only and have their own page. `reprocessing` (cron
operations: a full run, a no-op rerun, `emflow status`, and a run after new data in one input
chunk, counting the blocks each stage recomputed; `--only reprocessing --markdown
docs/operations_benchmarks.md`), `methods` (every `[segmentation] method` as `emflow run` on the
dev cube's held-out half with the shipped model's affinities and with GT-derived inputs, beside
elf's and waterz's in-memory equivalents, parameters chosen on the other half; `--only methods
--markdown docs/methods_benchmarks.md`), `anisotropic_in_memory` (serial-section data: the dev
cube cut to 40 nm sections against elf's 2D-supervoxel workflow, and the ISBI 2012 sections the
ssTEM model held out; `--only anisotropic_in_memory --markdown docs/anisotropic_benchmarks.md`),
`evaluation` (scoring a 500 MVox segmentation block by block against skimage's and elf's in-memory
metrics at the sizes they hold; `--only evaluation --markdown docs/evaluation_benchmarks.md`),
`halo` (what the supervoxel halo costs and buys: `emflow run` with the "auto" halo against larger
ones on GT-derived FIB-SEM boundaries at 62.5 MVox, on the dev cube with the CNN, and on the ISBI
sections the ssTEM model held out; `--only halo --markdown docs/halo_benchmarks.md`), `noop_rerun`
(`emflow run` on a finished 20,480-block segmentation run, fresh process, against the
goal of 5 s; the full run it needs took 72 s at stop 36; `--quick`: 1,024 blocks), and
two that need a trained model (`--model PATH`,
default the shipped one):
- inference: CNN throughput, a bare forward pass vs the sliding-window patches vs `emflow predict`,
  on the CPU and on a GPU when torch sees one;
- cnn_accuracy: segmentation from raw data with the CNN on FlyEM data the model was not trained on,
  emflow vs elf on the same predicted boundaries, ARAND and VOI against the groundtruth.
Writes the Markdown tables of the benchmarks it ran to docs/benchmarks.md and the raw results to
benchmarks/results/benchmarks.json (`--markdown` for another page, e.g.
`python -m benchmarks --only inference cnn_accuracy --markdown docs/cnn_benchmarks.md`, whose raw
results then go to benchmarks/results/cnn_benchmarks.json).
"""

from __future__ import annotations

import argparse
import importlib
import platform
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from . import end_to_end

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NAMES = ("end_to_end", "scaling", "memory", "orchestration", "hierarchical_multicut")
NAMES = DEFAULT_NAMES + (
    "inference",
    "cnn_accuracy",
    "reprocessing",
    "methods",
    "anisotropic_in_memory",
    "evaluation",
    "halo",
    "noop_rerun",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a look in a few minutes, not figures to quote")
    parser.add_argument("--skip-elf", action="store_true", help="end_to_end and cnn_accuracy without elf")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=NAMES,
        default=list(DEFAULT_NAMES),
        help=f"benchmarks to run (default: {' '.join(DEFAULT_NAMES)}; inference and cnn_accuracy only when named)",
    )
    parser.add_argument("--model", type=Path, metavar="PATH", help="model file for inference and cnn_accuracy (default: the shipped model)")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="raw results (default benchmarks/results/<the Markdown page's name>.json, so that the pages' runs keep theirs apart)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="PATH",
        default=ROOT / "docs" / "benchmarks.md",
        help="page for the tables of the benchmarks run, replaced (default docs/benchmarks.md)",
    )
    arguments = parser.parse_args(argv)
    if arguments.json is None:
        arguments.json = ROOT / "benchmarks" / "results" / f"{arguments.markdown.stem}.json"

    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": end_to_end.machine_description(),
        "python": platform.python_version(),
        "emflow": metadata.version("emflow"),
        "quick": arguments.quick,
        "seconds": {},
    }
    sections = []
    for name in arguments.only:
        print(f"== {name} ...", flush=True)
        started = time.perf_counter()
        if name == "end_to_end":
            results[name] = end_to_end.run(
                scale=1 if arguments.quick else 2, repeats=1 if arguments.quick else 3, skip_elf=arguments.skip_elf
            )
            section = end_to_end.markdown(results[name])
        elif name == "scaling":
            from . import scaling

            results[name] = scaling.run(arguments.quick)
            # The figure lies beside the page, which shows it.
            figure_path = arguments.markdown.parent / f"{arguments.markdown.stem}_scaling.png"
            figure_path.parent.mkdir(parents=True, exist_ok=True)
            figure_path.write_bytes(scaling.figure(results[name]))
            section = scaling.markdown(results[name], figure_path.name)
        elif name == "memory":
            from . import memory

            results[name] = memory.run(arguments.quick)
            section = memory.markdown(results[name])
        elif name == "inference":
            # Imported here: they import torch, which the other benchmarks' processes need not carry.
            from . import inference

            results[name] = inference.run(arguments.quick, arguments.model)
            section = inference.markdown(results[name])
        elif name == "cnn_accuracy":
            from . import cnn_accuracy

            results[name] = cnn_accuracy.run(arguments.quick, arguments.model, skip_elf=arguments.skip_elf)
            section = cnn_accuracy.markdown(results[name])
        elif name == "reprocessing":
            from . import reprocessing

            results[name] = reprocessing.run(arguments.quick)
            section = reprocessing.markdown(results[name])
        elif name == "methods":
            from . import methods

            results[name] = methods.run(arguments.quick)
            section = methods.markdown(results[name])
        elif name == "evaluation":
            from . import evaluation

            # 500 MVox (the dev cube tiled 4x per axis); the in-memory peers at 7.8 and 62.5 MVox.
            results[name] = evaluation.run(scale=1 if arguments.quick else 4, in_memory_scales=(1,) if arguments.quick else (1, 2))
            section = evaluation.markdown(results[name])
        elif name == "anisotropic_in_memory":
            from . import anisotropic_in_memory

            # --model names the FIB-SEM model of inference and cnn_accuracy; this one takes the shipped ssTEM model.
            results[name] = anisotropic_in_memory.run(arguments.quick)
            section = anisotropic_in_memory.markdown(results[name])
        else:
            # orchestration, hierarchical_multicut, noop_rerun: imported where they run, so that one benchmark's
            # imports cannot keep the others from running.
            module = importlib.import_module(f".{name}", __package__)
            results[name] = module.run(arguments.quick)
            section = module.markdown(results[name])
        results["seconds"][name] = time.perf_counter() - started
        print(section + "\n", flush=True)
        sections.append(section)

    end_to_end.write_results(arguments.json, results)
    machine = results["machine"]
    command = "python -m benchmarks" + (" --quick" if arguments.quick else "")
    if arguments.only != list(DEFAULT_NAMES):
        command += " --only " + " ".join(arguments.only)
    if arguments.model:
        command += f" --model {arguments.model}"
    json_path = arguments.json.resolve()
    shown_json_path = json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path
    header = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {results['date']}: "
        f"{machine['cpu_model']}, {machine['cpu_count']} cores, {machine['memory_gib']} GiB, Python {results['python']}, emflow {results['emflow']}. "
        f"Figures are from that one run; rerun to reproduce. Raw results: `{shown_json_path}` (not committed).",
        "",
        "",
    ]
    arguments.markdown.parent.mkdir(parents=True, exist_ok=True)
    arguments.markdown.write_text("\n".join(header) + "\n\n".join(sections) + "\n")
    print(f"written: {arguments.json}, {arguments.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
