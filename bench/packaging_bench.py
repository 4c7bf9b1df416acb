"""int8 / fp16 vs fp32 ONNX variants of the LSTM price model and the sentiment transformer.

Trains both demo models briefly, packages them (fp16 + int8) into a temporary registry and prints,
per variant: batch-1 latency (median, p99), batch-32 throughput and file size, with ratios to fp32.
One ONNX Runtime thread, CPU. Usage: ``python bench/packaging_bench.py [--runs 500] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from prediction_service.architectures import signature_for
from prediction_service.modelzoo.datasets import VOCAB_PATH, dataset_for
from prediction_service.modelzoo.training import default_plans, train
from prediction_service.packaging.pipeline import PackagingOptions, PackagingRequest, package_model

MODELS = {"lstm-price": "lstm_price", "sentiment-transformer": "sentiment_transformer"}
VARIANTS = ("onnx-fp32", "onnx-fp16", "onnx-int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=500, help="batch-1 runs per variant (batch-32 runs: runs/4)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    options = PackagingOptions(fp16=True, int8=True, torchscript=False, state_dict=False,
                               benchmark_runs=args.runs, threads=args.threads, validation_rows=64)
    plans = default_plans()
    with tempfile.TemporaryDirectory() as tmp:
        for name, architecture in MODELS.items():
            trained = train(plans[architecture])
            request = PackagingRequest(
                name=name, version="1.0.0", signature=signature_for(architecture, trained.config),
                architecture=architecture, architecture_config=trained.config,
                extra_files={"vocab.txt": VOCAB_PATH} if architecture == "sentiment_transformer" else {},
            )
            inputs = dataset_for(architecture, 64, seed=99, config=trained.config).inputs
            result = package_model(trained.model, request, Path(tmp), options, validation_inputs=inputs)
            _print_table(name, result.benchmarks, {v.variant: v.max_abs_error for v in result.validations}, args)


def _print_table(name: str, benchmarks: dict, errors: dict[str, float], args: argparse.Namespace) -> None:
    base = benchmarks["onnx-fp32"]
    print(f"\n{name}  ({args.runs} batch-1 runs, {args.runs // 4} batch-32 runs, {args.threads} thread(s))")
    print(f"{'variant':<10} {'p50 ms':>8} {'p99 ms':>8} {'rows/s@32':>10} {'size KiB':>9} {'max err':>9}   "
          f"{'p50 x':>6} {'p99 x':>6} {'thru x':>6} {'size x':>6}")
    for key in VARIANTS:
        b = benchmarks.get(key)
        if b is None:
            print(f"{key.removeprefix('onnx-'):<10} rejected by validation")
            continue
        print(f"{key.removeprefix('onnx-'):<10} {b.latency_ms_p50:>8.3f} {b.latency_ms_p99:>8.3f} "
              f"{b.throughput_rows_per_s:>10.0f} {b.size_bytes / 1024:>9.1f} {errors[key]:>9.2e}   "
              f"{b.latency_ms_p50 / base.latency_ms_p50:>6.2f} {b.latency_ms_p99 / base.latency_ms_p99:>6.2f} "
              f"{b.throughput_rows_per_s / base.throughput_rows_per_s:>6.2f} {b.size_bytes / base.size_bytes:>6.2f}")


if __name__ == "__main__":
    main()
