"""patchtst-price next to lstm-price and gbdt-direction: ONNX Runtime latency at batch 1 and rows/s at a batch.

Trains and packages the three as the demo does (fp32 ONNX only here, validated against PyTorch / LightGBM) in a
temporary registry, then runs each fp32 graph in-process with ONNX Runtime (the runtime the server uses) on
the tensors their declared bars steps make from synthetic bars: p50/p99 at batch 1 (one caller, requests one
after the other) and p50 and rows/s at ``--batch``; plus the bars step's own cost per batch.
Usage: ``python bench/forecaster_bench.py [--runs 300] [--batch 32] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prediction_service.execution.runtimes import OnnxRuntime  # noqa: E402
from prediction_service.modelzoo import gbdt, patchtst  # noqa: E402
from prediction_service.modelzoo.datasets import bar_windows, bars_step_for  # noqa: E402
from prediction_service.modelzoo.synthetic import synthetic_ohlcv  # noqa: E402
from prediction_service.modelzoo.training import default_plans, train  # noqa: E402
from prediction_service.packaging.pipeline import PackagingOptions, PackagingRequest, package_model  # noqa: E402
from prediction_service.preprocessing.bars import preprocess_bars  # noqa: E402


def _time(run, runs: int) -> np.ndarray:
    for _ in range(10):
        run()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return np.array(samples) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300, help="timed runs at batch 1 (batched: runs / 4)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from prediction_service.commands.demo_registry import _declared_signature, build_gbdt_direction

    options = PackagingOptions(torchscript=False, state_dict=False, benchmark_runs=0, validation_rows=32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        lstm = train(default_plans()["lstm_price"])
        lstm_seconds = time.perf_counter() - started
        package_model(lstm.model, PackagingRequest(name="lstm-price", version="1.0.0",
                                                   signature=_declared_signature("lstm_price", lstm.config)),
                      root, options)
        forecaster = patchtst.train()
        package_model(forecaster.model, PackagingRequest(name=patchtst.NAME, version="1.0.0",
                                                         signature=patchtst.signature()),
                      root, options, validation_inputs=patchtst.validation_rows(32, 1234))
        tree = build_gbdt_direction(root, options=options)
        assert tree is not None
        models = {
            "lstm-price": (root / "lstm-price/v1.0.0", bars_step_for("lstm_price", lstm.config),
                           f"{sum(p.numel() for p in lstm.model.parameters())} params, trained {lstm_seconds:.1f} s"),
            patchtst.NAME: (root / f"{patchtst.NAME}/v1.0.0", patchtst.bars_step(),
                            f"{forecaster.parameters} params, trained {forecaster.train_seconds:.1f} s"),
            gbdt.NAME: (tree.path, gbdt.bars_step(), "40 trees"),
        }
        print(f"ONNX Runtime CPU fp32, {args.threads} thread(s); batch 1 = one caller, back to back")
        print(f"{'model':<16} {'output':<10} {'b1 p50':>8} {'b1 p99':>8} {f'b{args.batch} p50':>9} {'rows/s':>8} "
              f"{'bars step':>10}  notes")
        from prediction_service.registry import RegistryReader

        reader = RegistryReader(root)
        for name, (path, step, notes) in models.items():
            version = reader.get(name, "1.0.0")
            runtime = OnnxRuntime(path / "model.onnx", version.signature, args.threads)
            bars = bar_windows(synthetic_ohlcv(step.min_bars + args.batch, seed=5), args.batch, step.min_bars)
            batch = {step.input: preprocess_bars(step, bars)}
            one = {step.input: batch[step.input][:1]}
            b1 = _time(lambda: runtime.run(one), args.runs)
            bn = _time(lambda: runtime.run(batch), max(args.runs // 4, 20))
            prep = _time(lambda: preprocess_bars(step, bars), max(args.runs // 4, 20))
            shape = "x".join(str(d) for d in runtime.run(one)[version.signature.outputs[0].name].shape[1:])
            print(f"{name:<16} {'[b, ' + shape + ']':<10} {np.percentile(b1, 50):8.3f} {np.percentile(b1, 99):8.3f} "
                  f"{np.percentile(bn, 50):9.3f} {args.batch / (np.percentile(bn, 50) / 1000.0):8.0f} "
                  f"{np.percentile(prep, 50):10.3f}  {notes}")


if __name__ == "__main__":
    main()
