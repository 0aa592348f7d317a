"""``edgefleet compress``: a thin command over ``compress.compress_file``.

It parses options, runs the pipeline, prints a per-pass table (or JSON), writes the model, and
turns the library's errors into user-facing messages. Nothing here decides anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgefleet.compiler.errors import CompileError


@click.command(name="compress")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--pipeline", "spec", required=True, metavar="SPEC",
              help="Passes in order, e.g. prune:0.5,cluster:16,int8,entropy, or a .yaml file listing them.")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="DATA",
              help="Samples (.npz by input name, optional 'labels'): split into calibration and held-out evaluation.")
@click.option("--calibration", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="DATA",
              help="Separate calibration samples; --data is then used for evaluation only.")
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the compressed ONNX model.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of tables.")
def compress_command(model: Path, spec: str, data: Path | None, calibration: Path | None, out_path: Path,
                     as_json: bool) -> None:
    """Compress an ONNX model with a pipeline of passes and report what each pass did.

    \b
    Passes (docs/compression.md has every knob):
      prune:S          zero the fraction S of weights by magnitude (bias-corrected on data)
      nm:2:4           N:M sparsity, 2 of every 4 weights
      channels:R       remove the fraction R of channels and rewire the next layers
      lowrank:E        SVD factorisation keeping energy E of the outputs on --data
      cluster:K        snap each layer's weights to K shared values
      int8             static int8 (QDQ, per-tensor), calibrated on --data
      mixed:B          int8, the most sensitive layers kept float until SQNR >= B dB
      finetune         train on the labelled --data, keeping zeros and shared values (train extra)
      distill:width=W  train a student W times as wide from the model (train extra)
      entropy          measure the zstd / Huffman-coded artifact (last step)
    Each pass is measured: parameters, non-zero parameters, MACs, size, fidelity against its input.

    \b
    Example:
      edgefleet compress model.onnx --pipeline prune:0.5,cluster:16,int8,entropy --data digits.npz -o small.onnx
    """
    from edgefleet.compiler.compress import compress_file

    try:
        result = compress_file(model, spec, data=data, calibration=calibration, out=out_path)
    except (CompileError, ValueError) as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(exc), "type": type(exc).__name__}, indent=2))
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"ok": True, "model": str(model), "out": str(out_path), **result.to_dict()}, indent=2))
        return
    click.echo(render(result))
    click.echo(f"  wrote {out_path}")


def render(result: object) -> str:
    """The per-pass table and the summary."""
    from edgefleet.compiler.compress import PipelineResult

    assert isinstance(result, PipelineResult)
    header = f"{'pass':<16}{'params':>10}{'nonzero':>10}{'MACs':>10}{'size':>12}{'top-1 agr.':>12}{'SQNR dB':>9}"
    lines = [header, "-" * len(header)]
    o = result.original
    lines.append(f"{'(original)':<16}{o.params:>10}{o.nonzero_params:>10}{o.macs:>10}{o.size_bytes:>12}{'':>12}{'':>9}")
    for step in result.steps:
        r = step.report
        agree = r.fidelity.top1_agreement
        sqnr = r.fidelity.sqnr_db
        lines.append(
            f"{r.pass_name:<16}{r.params:>10}{r.nonzero_params:>10}{step.macs:>10}{r.size_bytes:>12}"
            f"{'-' if agree is None else f'{agree:.2%}':>12}{'exact' if sqnr is None else f'{sqnr:.1f}':>9}"
        )
    for step in result.steps:
        if step.report.pass_name == "mixed-int8":  # its notes are its report: the sensitivity table and the tuning
            lines += ["", "mixed precision", *(f"  {n}" for n in step.report.notes)]
    lines.append("")
    lines.append(f"raw size        {result.final.size_bytes} bytes (fp32 original {o.size_bytes})")
    if result.entropy is not None:
        e = result.entropy
        lines.append(f"entropy-coded   {e.transfer_bytes} bytes ({e.codec}; zstd {e.zstd_bytes}, Huffman {e.huffman_bytes}, "
                     f"entropy bound {e.entropy_bytes}; {e.entropy_bits_per_weight} bits/weight)")
    lines.append(f"compression     {result.compression_ratio:.2f}x vs fp32; MACs {o.macs} -> {result.final.macs}")
    f = result.fidelity
    if f.top1_agreement is not None:
        lines.append(f"fidelity        top-1 agreement with the original {f.top1_agreement:.2%}"
                     + (" (random inputs)" if f.synthetic else ""))
    if f.accuracy is not None and f.reference_accuracy is not None:
        lines.append(f"accuracy        {f.accuracy:.2%} (original {f.reference_accuracy:.2%}, "
                     f"{100 * (f.accuracy - f.reference_accuracy):+.2f} points)")
    return "\n".join(lines)
