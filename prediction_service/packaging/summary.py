"""Plain-text summary of a packaging run: one row per variant."""

from __future__ import annotations

from .pipeline import PackagingResult


def summary_table(result: PackagingResult) -> str:
    version = result.version
    header = ("variant", "format", "precision", "size", "p50 ms", "p99 ms", "rows/s@32", "max err", "status")
    rows = [header]
    for v in result.validations:
        bench = result.benchmarks.get(v.variant)
        artifact = next((a for a in version.metadata.artifacts if a.format == v.format and a.precision == v.precision),
                        None)
        rows.append((
            v.variant, v.format, v.precision,
            _size(artifact.size_bytes) if artifact else "-",
            f"{bench.latency_ms_p50:.3f}" if bench else "-",
            f"{bench.latency_ms_p99:.3f}" if bench else "-",
            f"{bench.throughput_rows_per_s:.0f}" if bench else "-",
            "-" if v.max_abs_error is None else f"{v.max_abs_error:.2e}",
            "accepted" if v.passed else "REJECTED: " + "; ".join(v.failures),
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header) - 1)]
    lines = [f"{version.name}:{version.version} registered at {version.path}"]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    for v in result.rejected:
        if not v.worst_inputs:  # crashed, hung or failed: no rows to name
            continue
        worst = ", ".join(f"#{w.index} ({w.max_abs_error:.3g})" for w in v.worst_inputs)
        lines.append(f"{v.variant} rejected; worst inputs: {worst}")
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"
