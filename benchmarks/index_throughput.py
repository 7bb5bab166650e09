"""Index throughput: raw encoder speed on pre-decoded tensors vs `agent-cir index` end to end.

Real-size open_clip ViT-B-32 with random init (same FLOPs as trained weights), photos from
../shared/data/photos/imagenet-samples. Measures, at the same batch size:
  1. raw encoder throughput on already decoded + preprocessed tensors (images/s);
  2. `agent-cir index` end to end (the real CLI command via typer's CliRunner, fresh output folder): the
     encode phase's images/s as the index summary reports it (scan/hash and model loading excluded);
  3. their ratio (target >= 0.85), and per-image decode+preprocess cost vs per-image encode cost (in CPU
     seconds), which predicts the ratio on a machine with few cores: decode work competes with the encoder
     for the same cores, so the best possible ratio is about encode / (encode + decode).

How to run (on a quiet machine; other processes distort the numbers):
  .venv/bin/python benchmarks/index_throughput.py                      # 1,000 photos, batch 64, default workers
  .venv/bin/python benchmarks/index_throughput.py --limit 128          # quick check
  .venv/bin/python benchmarks/index_throughput.py --workers 2 --json /tmp/throughput.json
Record results and the exact command in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "photos" / "imagenet-samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--limit", type=int, default=1000, help="number of photos (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="decode workers for the index run (default: the CLI's)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--decode-sample", type=int, default=100, help="images timed for the decode cost")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    from agent_cir.cli import _register, app
    from agent_cir.config import EncoderConfig
    from agent_cir.encoders import create_encoder
    from agent_cir.index.decode import load_image
    from agent_cir.index.loader import default_workers

    if not args.photos.is_dir():
        sys.exit(f"photos folder not found: {args.photos}")
    files = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[: args.limit]
    n, batch_size = len(files), args.batch_size
    workers = default_workers() if args.workers is None else args.workers
    threads = torch.get_num_threads()
    print(f"{n} photos, {args.model} random init, batch {batch_size}, torch threads {threads}, "
          f"decode workers {workers}, cores {os.cpu_count()}", flush=True)

    encoder = create_encoder(EncoderConfig(model=args.model, pretrained="none", batch_size=batch_size))

    # Per-image decode + preprocess cost, on one thread as in a decode worker.
    sample = files[: min(args.decode_sample, n)]
    torch.set_num_threads(1)
    started = time.process_time()
    tensors = [encoder.preprocess(load_image(path)) for path in sample]
    decode_cpu_s = (time.process_time() - started) / len(sample)
    torch.set_num_threads(threads)
    print(f"decode+preprocess: {decode_cpu_s * 1000:.1f} ms CPU per image (one core)", flush=True)

    # 1. Raw encoder throughput on pre-decoded tensors (after one warm-up batch).
    tensors += [encoder.preprocess(load_image(path)) for path in files[len(sample):]]
    batches = [torch.stack(tensors[i : i + batch_size]) for i in range(0, n, batch_size)]
    del tensors
    encoder.encode_images(batches[0][: min(8, len(batches[0]))])
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for batch in batches:
        encoder.encode_images(batch, batch_size=batch_size)
    raw_wall, raw_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    raw_rate = n / raw_wall
    encode_cpu_s = raw_cpu / n
    print(f"raw encoder: {raw_rate:.2f} images/s ({encode_cpu_s * 1000:.1f} ms CPU per image)", flush=True)
    del batches, encoder

    # 2. `agent-cir index` end to end, through the CLI command itself.
    from typer.testing import CliRunner

    _register()
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "photos"
        gallery.mkdir()
        for path in files:
            os.symlink(path.resolve(), gallery / path.name)
        command = ["index", str(gallery), "--out", str(Path(tmp) / "idx"), "--model", args.model,
                   "--pretrained", "none", "--batch-size", str(batch_size), "--json", "--quiet"]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        wall0 = time.perf_counter()
        result = CliRunner().invoke(app, command)
        cli_wall = time.perf_counter() - wall0
        if result.exit_code != 0:
            sys.exit(f"agent-cir index failed:\n{result.output}")
        summary = json.loads(result.output[result.output.index("{"):])
    e2e_rate = summary["images_per_second"]
    ratio = e2e_rate / raw_rate
    predicted = encode_cpu_s / (encode_cpu_s + decode_cpu_s)
    print(f"agent-cir index: {e2e_rate:.2f} images/s in the encode phase "
          f"({summary['indexed']} images, {summary['encode_seconds']:.1f} s; whole command {cli_wall:.1f} s "
          "incl. model load and hashing)")
    print(f"ratio end-to-end / raw: {ratio:.3f}  (target >= 0.85)")
    print(f"CPU-bound prediction encode/(encode+decode): {predicted:.3f} "
          f"[encode {encode_cpu_s * 1000:.1f} ms + decode {decode_cpu_s * 1000:.1f} ms CPU per image]")
    results = {
        "photos": n, "model": args.model, "batch_size": batch_size, "torch_threads": threads, "workers": workers,
        "cores": os.cpu_count(), "raw_images_per_s": round(raw_rate, 3), "index_images_per_s": round(e2e_rate, 3),
        "ratio": round(ratio, 4), "decode_cpu_ms_per_image": round(decode_cpu_s * 1000, 2),
        "encode_cpu_ms_per_image": round(encode_cpu_s * 1000, 2), "predicted_ratio_cpu_bound": round(predicted, 4),
        "index_command_seconds": round(cli_wall, 2), "index_summary": summary,
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
