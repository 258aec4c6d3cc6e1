"""Streaming from a Hub: mergehub's ranged-read merge vs download-everything-then-merge, at a fixed bandwidth.

A Hub-compatible server (tests/hubserver.py) on 127.0.0.1 serves the benchmark models, throttled to
`--bandwidth`. Three figures, all measured in this run:

- mergehub: `mergehub merge` on Hub IDs, end to end (resolve, headers, ranged reads, merge, write);
- the transfer limit: the tensor bytes the recipe needs divided by the bandwidth (the physical floor);
- mergekit's way: `snapshot_download` of every model, then `mergekit-yaml` on the local copies.

It also records how many input bytes the server had sent when mergehub's first output shard was
complete (the target: under half of them), and the cost of verified streaming: the same merge with
`MERGEHUB_VERIFY=0` (no sha256 of the shards as they arrive), as a fraction of the streaming time
(the target: under 5 %). `--bandwidth 0` serves unthrottled, where that cost shows most.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_merge import (  # noqa: E402
    MODEL_NAMES,
    RECIPES,
    RESULTS_DIR,
    SMALL_SHAPE,
    LlamaShape,
    ensure_models,
    find_mergekit,
    run_child,
)
from tests.hubserver import HubServer  # noqa: E402

TOKEN = "tok-bench"
REPOS = {name: f"bench/{name}" for name in MODEL_NAMES}


def _first_shard_watcher(parent: Path, name: str, server: HubServer, seen: dict) -> threading.Thread:
    """Poll the merge's staging directory; note the served bytes when a second shard file appears."""

    def watch() -> None:
        while "bytes" not in seen and not seen.get("stop"):
            for staging in parent.glob(f".{name}.partial-*"):
                if any(staging.glob("model-00002-of-*.safetensors")):
                    seen["bytes"] = sum(server.bytes_served.values())
                    seen["seconds"] = time.perf_counter() - seen["started"]
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    """Run the streaming benchmark and print its table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, help="models are kept here between runs (shared with bench_merge.py)")
    p.add_argument("--method", default="linear", choices=sorted(RECIPES))
    p.add_argument(
        "--bandwidth",
        type=float,
        default=200.0,
        help="MB/s the server sends, all connections together (0: unthrottled)",
    )
    p.add_argument("--out-shard-size", default="1GB", help="output shard size (default 1GB: several shards)")
    p.add_argument("--small", action="store_true", help="small models, for a smoke test")
    p.add_argument("--no-mergekit", action="store_true")
    p.add_argument("--no-verify-cost", action="store_true", help="skip the second mergehub run without verification")
    args = p.parse_args(argv)

    shape = SMALL_SHAPE if args.small else LlamaShape()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="mergehub-bench-stream-"))
    models = ensure_models(
        root / ("models-small" if args.small else "models"), shape, noise=0.01, shard_bytes=1_000_000_000
    )
    runs = root / "stream-runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    bandwidth = args.bandwidth * 1e6
    server = HubServer(runs / "hub", {TOKEN: "bench"}, throttle_bps=int(bandwidth) or None).start()
    try:
        for name, directory in zip(MODEL_NAMES, models):
            server.add_repo(
                REPOS[name], {p.name: p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")}
            )
        env = {
            **os.environ,
            "HF_ENDPOINT": server.endpoint,
            "HF_TOKEN": TOKEN,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(runs / "hf_home"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        recipe = RECIPES[args.method]
        hub_recipe = runs / "recipe-hub.yml"
        hub_recipe.write_text(
            recipe.render({"base": REPOS["base"], "ft1": REPOS["finetune-1"], "ft2": REPOS["finetune-2"]}, shape.layers)
        )
        needed = sum(_tensor_bytes(models[MODEL_NAMES.index(_model_name(key))]) for key in recipe.reads)
        server.reset_stats()
        seen: dict = {"started": time.perf_counter()}
        watcher = _first_shard_watcher(runs, "out-mergehub", server, seen)
        ours = run_child(
            [
                sys.executable,
                "-m",
                "mergehub",
                "merge",
                str(hub_recipe),
                str(runs / "out-mergehub"),
                "--no-progress",
                "--out-shard-size",
                args.out_shard_size,
            ],
            runs / "mergehub.log",
            env=env,
        )
        seen["stop"] = True
        watcher.join()
        served = sum(server.bytes_served.values())
        limit = needed / bandwidth if bandwidth else float("nan")
        rows = {
            "method": args.method,
            "bandwidth_MBps": args.bandwidth,
            "needed_bytes": needed,
            "served_bytes": served,
            "mergehub_s": ours.seconds,
            "mergehub_rc": ours.returncode,
            "transfer_limit_s": limit,
            "first_shard_at_fraction": seen.get("bytes", served) / needed if "bytes" in seen else None,
            "first_shard_s": seen.get("seconds"),
            "mergehub_peak_rss": ours.peak_rss_bytes,
        }
        shutil.rmtree(runs / "out-mergehub", ignore_errors=True)
        if not args.no_verify_cost:
            plain = run_child(
                [
                    sys.executable,
                    "-m",
                    "mergehub",
                    "merge",
                    str(hub_recipe),
                    str(runs / "out-noverify"),
                    "--no-progress",
                    "--out-shard-size",
                    args.out_shard_size,
                ],
                runs / "mergehub-noverify.log",
                env={**env, "MERGEHUB_VERIFY": "0"},
            )
            rows |= {
                "mergehub_noverify_s": plain.seconds,
                "mergehub_noverify_rc": plain.returncode,
                "verify_overhead": ours.seconds / plain.seconds - 1,
            }
            shutil.rmtree(runs / "out-noverify", ignore_errors=True)
        mergekit = None if args.no_mergekit else find_mergekit()
        if mergekit:
            downloads = runs / "downloads"
            script = (
                "import sys\nfrom huggingface_hub import snapshot_download\n"
                "for repo, target in zip(sys.argv[1::2], sys.argv[2::2]):\n"
                "    snapshot_download(repo, local_dir=target)\n"
            )
            pairs = [x for name in MODEL_NAMES for x in (REPOS[name], str(downloads / name))]
            server.reset_stats()
            download = run_child([sys.executable, "-c", script, *pairs], runs / "download.log", env=env)
            local_recipe = runs / "recipe-local.yml"
            local_recipe.write_text(
                recipe.render(
                    {"base": downloads / "base", "ft1": downloads / "finetune-1", "ft2": downloads / "finetune-2"},
                    shape.layers,
                )
            )
            theirs = run_child(
                [mergekit, str(local_recipe), str(runs / "out-mergekit")], runs / "mergekit.log", env=env
            )
            rows |= {
                "download_s": download.seconds,
                "downloaded_bytes": sum(server.bytes_served.values()),
                "mergekit_merge_s": theirs.seconds,
                "mergekit_rc": theirs.returncode,
                "mergekit_way_s": download.seconds + theirs.seconds,
            }
            shutil.rmtree(downloads, ignore_errors=True)
            shutil.rmtree(runs / "out-mergekit", ignore_errors=True)
    finally:
        server.close()
    _print(rows)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"bench_stream-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"\nSaved {out}")
    return 0 if rows["mergehub_rc"] == 0 and rows.get("mergehub_noverify_rc", 0) == 0 else 1


def _model_name(key: str) -> str:
    return {"base": "base", "ft1": "finetune-1", "ft2": "finetune-2"}[key]


def _tensor_bytes(directory: Path) -> int:
    """Bytes of tensor data in a model directory (file sizes minus headers)."""
    from mergehub.sources.local import LocalSource

    return sum(info.nbytes for info in LocalSource(directory).tensors().values())


def _print(r: dict) -> None:
    gb = 1e9
    print(
        f"\n{r['method']} at {r['bandwidth_MBps']:.0f} MB/s: the recipe needs {r['needed_bytes'] / gb:.2f} GB "
        f"(server sent {r['served_bytes'] / gb:.2f} GB to mergehub)"
    )
    print("| figure | seconds | ratio to the transfer limit |\n|---|---|---|")
    limit = r["transfer_limit_s"]
    print(f"| transfer limit (needed bytes / bandwidth) | {limit:.1f} | 1.00 |")
    print(f"| mergehub, streaming end to end | {r['mergehub_s']:.1f} | {r['mergehub_s'] / limit:.2f} |")
    if "mergehub_noverify_s" in r:
        print(
            f"| mergehub, streaming, shards not verified (MERGEHUB_VERIFY=0) | {r['mergehub_noverify_s']:.1f} "
            f"| {r['mergehub_noverify_s'] / limit:.2f} |"
        )
    if "mergekit_way_s" in r:
        print(
            f"| snapshot_download + mergekit-yaml | {r['mergekit_way_s']:.1f} ({r['download_s']:.1f} + "
            f"{r['mergekit_merge_s']:.1f}) "
            f"| {r['mergekit_way_s'] / limit:.2f} |"
        )
        print(f"\nmergehub / mergekit's way: {r['mergehub_s'] / r['mergekit_way_s']:.2f}")
    if "verify_overhead" in r:
        print(
            f"\nVerified streaming costs {100 * r['verify_overhead']:+.1f} % of the streaming time (target: under 5 %)"
        )
    if r["first_shard_at_fraction"] is not None:
        print(
            f"First output shard complete after {r['first_shard_s']:.1f} s, when "
            f"{100 * r['first_shard_at_fraction']:.0f} % "
            "of the needed input bytes had been sent"
        )


if __name__ == "__main__":
    sys.exit(main())
